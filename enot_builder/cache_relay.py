"""Run inside a build sandbox: 127.0.0.1:8080 -> the server's cache socket.

A sandbox never sees the host's loopback or addresses (network on or off), so enot
cannot reach the server's HTTP port. The server answers its read-only cache endpoints on a Unix
socket bound into the sandbox, and this relay (started in the sandbox just before
enot, as a plain script of the standard library) lets enot reach it by TCP as usual.
"""

import asyncio
import pathlib

SOCKET = "/enot-cache.sock"
PORT = 8080
READY = pathlib.Path("/tmp/enot-cache-relay.ready")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        server_reader, server_writer = await asyncio.open_unix_connection(SOCKET)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    READY.touch()  # noqa: ASYNC240 (once, before serving)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
