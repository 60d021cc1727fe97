"""The network of a sandboxed step that may use one: its own namespace, slirp4netns outside.

A sandboxed step never shares the host's network namespace. bwrap gives it a new one
(`--unshare-net`), and slirp4netns, a user-mode TCP/IP stack, connects it to the
outside: the step sees an interface `tap0` (10.0.2.100, gateway 10.0.2.2, DNS
10.0.2.3), and each of its connections is made again by slirp4netns, from the
host's network namespace, as an ordinary socket of the build user.

What that keeps out of reach, and why:
- the host's loopback: 127.0.0.1 inside is the step's own loopback, and slirp4netns
  runs with --disable-host-loopback, so the gateway address 10.0.2.2 does not lead
  to it either;
- the host's abstract Unix sockets, which belong to a network namespace (its own
  /proc/net/unix lists only its own); path Unix sockets are the mount namespace's
  business (see sandbox.py);
- the host's own addresses on other interfaces: before the step runs, each is routed
  to "prohibit" inside its namespace (see `host_addresses`), which it cannot change,
  having no capabilities there.
Everything else the host can reach (the internet, and the local network, cloud
metadata addresses included) stays reachable: firewall the build user's traffic
(`iptables -m owner --uid-owner`) to close those.

slirp4netns runs as the build user, not as root: its connections are then the build
user's (firewall rules by owner see them), and a bug in it exploited by a build gets
that user's rights only. Its own --enable-sandbox cannot be used: it expects to map
root in the namespace's user namespace, which bwrap's nested one does not.

The start is a handshake: bwrap reports the sandbox's pid on --info-fd and holds the
step on --block-fd; slirp4netns attaches to that pid's network namespace and reports
on --ready-fd; the routes are set; only then is the step let go. slirp4netns stops
when its --exit-fd closes: when the step ends, or when the server dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
from pathlib import Path

# ioctl on a namespace file: a descriptor of the user namespace that owns it
# (linux/nsfs.h). bwrap runs the step in a user namespace nested in the one that owns
# its network namespace; slirp4netns must join the owner to create its tap device.
NS_GET_USERNS = 0xB701
TAP = "tap0"
# slirp4netns's resolver: it forwards to the host's. The host's /etc/resolv.conf may
# name a resolver on its loopback (systemd-resolved's 127.0.0.53), which a step
# cannot reach, so steps get this one instead.
RESOLV_CONF = b"nameserver 10.0.2.3\n"
# Bringing the network up takes milliseconds; this bounds a wedged slirp4netns.
log = logging.getLogger(__name__)

UP_TIMEOUT = 30.0
STOP_GRACE = 5.0
ERROR_TAIL = 2000
# Tries of setting the prohibit routes (_prohibit_host_addresses); `replace`, so a
# try after a partial one is no error.
PROHIBIT_TRIES = 6


class NetworkError(Exception):
    """The step's network could not be set up (the step never ran)."""


class StepNetwork:
    """The user-mode network of one sandboxed step.

    Use: put `bwrap_args()` in bwrap's command line and `pass_fds` in the step's
    process; once the process started call `started()`, then `await up()`; after the
    step has ended (or was stopped) `await down()`, always. `down()` before the step
    ended would let it run: bwrap takes a closed --block-fd as the go-ahead.
    """

    def __init__(self, slirp4netns: Path, run_as: list[str]) -> None:
        self.slirp4netns = slirp4netns
        self.run_as = run_as  # setpriv ... -- : the build user, when the server is root
        self._fds: set[int] = set()
        self._info_r, self._info_w = self._pipe()
        self._block_r, self._block_w = self._pipe()
        self._resolv_r, resolv_w = self._pipe()
        os.write(resolv_w, RESOLV_CONF)
        self._close(resolv_w)
        self._exit_w: int | None = None
        self._slirp: asyncio.subprocess.Process | None = None
        self._errors = bytearray()
        self._errors_task: asyncio.Task[None] | None = None

    def bwrap_args(self) -> list[str]:
        return ["--info-fd", str(self._info_w), "--block-fd", str(self._block_r),
                "--ro-bind-data", str(self._resolv_r), "/etc/resolv.conf"]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self._info_w, self._block_r, self._resolv_r)

    def started(self) -> None:
        """The step's process has its ends of the pipes; ours are closed."""
        for fd in self.pass_fds:
            self._close(fd)

    async def up(self) -> None:
        try:
            async with asyncio.timeout(UP_TIMEOUT):
                await self._up()
        except TimeoutError:
            raise NetworkError(f"the network was not up within {UP_TIMEOUT:.0f} s") from None
        except OSError as e:  # a tool that cannot start, no file descriptors left
            raise NetworkError(str(e)) from None

    async def _up(self) -> None:
        raw = await self._read_to_end(self._info_r)
        try:
            info = json.loads(raw)
            pid, netns_id = int(info["child-pid"]), int(info["net-namespace"])
        except (ValueError, KeyError, TypeError):
            raise NetworkError("the sandbox did not start (bubblewrap reported no process; "
                               "see the build log)") from None
        try:
            netns = self._keep(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as e:
            raise NetworkError(f"cannot open the sandbox's network namespace: {e}") from None
        # The pid could have been reused by now: it must name the namespace bwrap made.
        if os.fstat(netns).st_ino != netns_id:
            raise NetworkError("the sandbox ended before its network was set up")
        userns = self._keep(fcntl.ioctl(netns, NS_GET_USERNS))
        ready_r, ready_w = self._pipe()
        exit_r, self._exit_w = self._pipe()
        self._slirp = await asyncio.create_subprocess_exec(
            *self.run_as, str(self.slirp4netns), "--configure", "--mtu=65520",
            "--disable-host-loopback", "--enable-seccomp", f"--ready-fd={ready_w}",
            f"--exit-fd={exit_r}", f"--userns-path=/proc/self/fd/{userns}", "--netns-type=path",
            f"/proc/self/fd/{netns}", TAP,
            pass_fds=(ready_w, exit_r, netns, userns), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        for fd in (ready_w, exit_r):
            self._close(fd)
        self._errors_task = errors = asyncio.create_task(self._collect_errors())
        ready = await self._read_to_end(ready_r)
        if ready != b"1":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(errors), 2.0)
            said = self._errors.decode(errors="replace").strip().splitlines()
            raise NetworkError("slirp4netns did not bring the network up"
                               + (f": {said[-1]}" if said else ""))
        await self._prohibit_host_addresses(userns, netns, pid)
        for fd in (netns, userns):
            self._close(fd)
        os.write(self._block_w, b"1")  # the go-ahead: the step runs from here

    async def _prohibit_host_addresses(self, userns: int, netns: int, pid: int) -> None:
        """Route the host's own addresses nowhere, inside the step's namespace.

        Tried PROHIBIT_TRIES times, waiting longer each time: once in several hundred
        steps under CI, and far more often on a machine loaded with other test runs,
        `ip` was refused (EPERM) although slirp4netns, as the same user, had just
        configured the same namespace. The cause is not understood; that it comes with
        load suggests a race with bubblewrap's setup, which a longer wait outlasts. The
        step has not started yet, so waiting costs nothing but time.
        """
        routes = "".join(f"route replace prohibit {address}/32\n" for address in host_addresses())
        if not routes:
            return
        # `ip` keeps the capabilities nsenter gained in the namespace's user namespace
        # only if it runs there as uid 0 (an exec drops them otherwise), and bubblewrap
        # writes that mapping from inside the sandbox, after reporting the sandbox's pid:
        # wait for it (slirp4netns needs no wait: it does not exec after entering).
        await _mapped(pid)
        for attempt in range(1, PROHIBIT_TRIES + 1):
            proc = await asyncio.create_subprocess_exec(
                *self.run_as, "nsenter", f"--user=/proc/self/fd/{userns}",
                f"--net=/proc/self/fd/{netns}", "--preserve-credentials", "--", "ip",
                "-batch", "-",
                pass_fds=(userns, netns), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            output, _ = await proc.communicate(routes.encode())
            if proc.returncode == 0:
                return
            said = output.decode(errors="replace").strip()[-ERROR_TAIL:]
            said += f" (uid_map of the sandbox: {_uid_map(pid)!r})"
            if attempt == PROHIBIT_TRIES:
                raise NetworkError(f"cannot keep the host's own addresses out of the sandbox: {said}")
            log.warning("ip in a step's network namespace failed (try %d): %s", attempt, said)
            await asyncio.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))

    async def _collect_errors(self) -> None:
        assert self._slirp is not None and self._slirp.stderr is not None
        while chunk := await self._slirp.stderr.read(4096):
            self._errors.extend(chunk)
            del self._errors[:-ERROR_TAIL]

    async def down(self) -> None:
        """Stop slirp4netns and close what is still open; call once the step is over."""
        if self._exit_w is not None:
            self._close(self._exit_w)  # slirp4netns's --exit-fd: it stops
            self._exit_w = None
        for fd in list(self._fds):
            self._close(fd)
        if self._slirp is not None and self._slirp.returncode is None:
            try:
                await asyncio.wait_for(self._slirp.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._slirp.kill()
                await self._slirp.wait()
        if self._errors_task is not None:
            self._errors_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._errors_task

    async def _read_to_end(self, fd: int) -> bytes:
        """Read a pipe until its writers close it, without blocking the event loop."""
        self._fds.discard(fd)  # the transport owns it from here, and closes it
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
        try:
            return await reader.read()  # a few bytes, written by bwrap or slirp4netns
        finally:
            transport.close()

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._fds.update((r, w))
        return r, w

    def _keep(self, fd: int) -> int:
        self._fds.add(fd)
        return fd

    def _close(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            os.close(fd)


async def _mapped(pid: int) -> None:
    """Return once the user namespace of the sandbox's process `pid` maps a uid (its
    uid_map is written once, by bubblewrap), or the process is gone; the caller's
    timeout bounds the wait. Polled: the kernel offers no event for it."""
    while (written := _uid_map(pid)) is not None and not written:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def _uid_map(pid: int) -> str | None:
    """The uid_map of process `pid`, stripped; None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/uid_map").read_text().strip()
    except OSError:
        return None


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses outside 127.0.0.0/8, every one of every interface.

    From the kernel's local routing table, as /proc/net/fib_trie shows it: each
    address is a line "|-- <address>" followed by "/32 host LOCAL". (slirp4netns
    gives steps IPv4 only, so IPv6 addresses need nothing.)
    """
    found: list[str] = []
    candidate = None
    for line in Path("/proc/net/fib_trie").read_text().splitlines():
        line = line.strip()
        if line.startswith("|-- "):
            candidate = line[4:]
        elif line == "/32 host LOCAL" and candidate is not None:
            address = ipaddress.IPv4Address(candidate)
            if not address.is_loopback and str(address) not in found:
                found.append(str(address))
    return found
