"""Build a corpus of real Erlang libraries, served as GitHub from local repositories.

    .venv/bin/python -m bench.corpus DIR [--list FILE] [--markdown OUT] [--keep]
    .venv/bin/python -m bench.corpus --prepare MIRRORS DIR   # owner+name/repo -> DIR/owner/name

DIR holds one git repository a library, as DIR/<owner>/<name> (bare or not). A
server (the real `enot-builder serve`, on a temp data dir and its own PostgreSQL) gets
`git.rewrites = {"https://github.com/" = "file://DIR/"}`, so every clone of
https://github.com/<owner>/<name>, dependencies' too, comes from DIR and nothing from
the network. Each library is requested as https://github.com/<owner>/<name> at its
newest version tag (or the tag FILE names: lines `owner/name [tag]`), with the
server's default Erlang release; dependencies the server queues on its own are
listed too. At the end a table: library, tag, result, compiler, time, and N/M.

The package registry (hex.pm) is out of reach from a machine without the open
network: the script answers its API itself (`dependencies.hex_api` of the server
points at it) from the corpus, `GET /api/packages/<name>` naming the repository
whose `src/<name>.app.src` declares that application, with its version tags as the
releases. A registry dependency on a library the corpus lacks is then "not found",
as hex.pm would answer for a package it does not have.

The repositories are the user's own copies (e.g. fetched for a local trial); nothing
of them is committed, and `make test` never depends on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .harness import Server, Workdir, http

log = logging.getLogger("bench.corpus")

VERSION_TAG = re.compile(r"v?\d+(\.\d+)*")
POLL = 2.0


@dataclass
class Library:
    namespace: str
    name: str
    tag: str

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Row:
    library: str
    tag: str
    status: str
    compiler: str
    seconds: float | None
    stage: str
    message: str
    requested_by: str


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def newest_tag(repo: Path) -> str | None:
    """The highest plain version tag (1.2.3 or v1.2.3: no pre-releases), compared by
    number (git's v:refname puts every v1.x above every 4.x)."""
    tags = [tag for tag in git(repo, "tag").split() if VERSION_TAG.fullmatch(tag)]
    return max(tags, key=lambda tag: [int(part) for part in tag.lstrip("v").split(".")],
               default=None)


def libraries(corpus: Path, listing: Path | None) -> list[Library]:
    found = []
    if listing is not None:
        for line in listing.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            namespace, name = parts[0].split("/", 1)
            tag = parts[1] if len(parts) > 1 else newest_tag(corpus / namespace / name)
            if tag:
                found.append(Library(namespace, name, tag))
        return found
    for repo in sorted(p for p in corpus.glob("*/*") if p.is_dir()):
        tag = newest_tag(repo)
        if tag is None:
            log.warning("%s has no version tag; skipped", repo)
            continue
        found.append(Library(repo.parent.name, repo.name, tag))
    return found


def prepare(mirrors: Path, corpus: Path) -> None:
    """Bare clones of fetched mirrors (MIRRORS/<owner>+<name>/repo) as CORPUS/<owner>/<name>."""
    for mirror in sorted(mirrors.glob("*+*")):
        repo = mirror / "repo" if (mirror / "repo").is_dir() else mirror
        owner, name = mirror.name.split("+", 1)
        target = corpus / owner / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(target)], check=True)
        tags = len(git(target, "tag").split())
        print(f"{owner}/{name}: {tags} tags")
    for path in [corpus, *corpus.rglob("*")]:  # the build user reads them
        if path.is_dir():
            path.chmod(path.stat().st_mode | 0o755)
        else:
            path.chmod(path.stat().st_mode | 0o444)


def registry_index(corpus: Path) -> dict[str, dict]:
    """What the registry stand-in answers: application name -> hex.pm's answer shape
    (`releases`, `meta.links`), from each repository's default branch and tags."""
    index: dict[str, dict] = {}
    for repo in sorted(p for p in corpus.glob("*/*") if p.is_dir()):
        try:
            files = git(repo, "ls-tree", "--name-only", "HEAD", "src/").split()
        except subprocess.CalledProcessError:
            continue
        releases = [{"version": tag.lstrip("v")} for tag in git(repo, "tag").split()
                    if VERSION_TAG.fullmatch(tag)]
        for file in files:
            if file.endswith(".app.src"):
                index.setdefault(Path(file).name.removesuffix(".app.src"), {
                    "releases": releases,
                    "meta": {"links": {"GitHub": f"https://github.com/{repo.parent.name}/"
                                                 f"{repo.name}"}}})
    return index


class RegistryStandIn:
    """hex.pm's `GET /api/packages/<name>` answered from the corpus, on 127.0.0.1."""

    def __init__(self, corpus: Path) -> None:
        index = registry_index(corpus)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                name = self.path.removeprefix("/api/packages/")
                answer = index.get(name)
                body = json.dumps(answer if answer is not None else
                                  {"status": 404, "message": "Page not found"}).encode()
                self.send_response(200 if answer is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.packages = sorted(index)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RegistryStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def configure(server: Server, corpus: Path, timeout: int, hex_api: str) -> None:
    text = server.config_path.read_text()
    text = text.replace("[git]\n", f'[git]\nrewrites = {{ "https://github.com/" = "file://{corpus}/" }}\n')
    text = text.replace("timeout = 300\n", f"timeout = {timeout}\n")
    text += f'[dependencies]\nhex_api = "{hex_api}"\n'
    server.config_path.write_text(text)


def run(corpus: Path, wanted: list[Library], keep: bool, workers: int, timeout: int,
        deadline: float) -> list[Row]:
    with Workdir(keep) as workdir, RegistryStandIn(corpus) as registry:
        log.info("registry stand-in at %s: %s", registry.url, ", ".join(registry.packages))
        server = Server(workdir, "corpus", workers=workers)
        configure(server, corpus, timeout, registry.url)
        server.start()
        try:
            for lib in wanted:
                status, body = http(server.port, "POST", "/buildAsync", {
                    "full_name": lib.full_name, "clone_url": f"https://github.com/{lib.full_name}",
                    "versions": [{"ref": lib.tag}]})
                if status >= 300:
                    log.warning("%s %s refused: %s", lib.full_name, lib.tag, body[:300])
            started = time.monotonic()
            while time.monotonic() - started < deadline:
                _, body = http(server.port, "GET", "/queue?limit=1")
                counts = json.loads(body)["response"]
                if not any(counts.get(state) for state in ("queued", "running", "waiting")):
                    break
                time.sleep(POLL)
            else:
                log.warning("builds still unfinished after %d s", deadline)
            return collect(server)
        finally:
            server.stop()


def collect(server: Server) -> list[Row]:
    with server.db() as conn, conn.cursor() as cur:
        # Columns newer than the oldest server this runs against.
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'builds'")
        columns = {name for (name,) in cur.fetchall()}
        compiler = "b.compiler" if "compiler" in columns else "NULL"
        stage = "b.failure_stage::text" if "failure_stage" in columns else "NULL"
        cur.execute(f"""
            SELECT r.namespace || '/' || r.name, b.ref, b.status::text, {compiler},
                   EXTRACT(EPOCH FROM b.finished_at - b.started_at), {stage},
                   b.message, b.requested_by
            FROM builds b JOIN repositories r ON r.id = b.repository_id
            ORDER BY b.created_at""")
        return [Row(lib, ref, status, comp or "", float(secs) if secs is not None else None,
                    stage or "", message or "", requested_by or "")
                for lib, ref, status, comp, secs, stage, message, requested_by in cur.fetchall()]


def table(rows: list[Row], wanted: list[Library]) -> str:
    lines = ["| library | tag | result | compiler | time | requested by | message |",
             "|---|---|---|---|---:|---|---|"]
    for row in rows:
        result = row.status + (f" ({row.stage})" if row.status == "failed" and row.stage else "")
        seconds = f"{row.seconds:.0f} s" if row.seconds is not None else ""
        message = row.message.replace("|", "\\|").replace("\n", " ")[:160]
        by = "request" if row.requested_by in ("api", "") else row.requested_by
        lines.append(f"| {row.library} | {row.tag} | {result} | {row.compiler} | {seconds} | "
                     f"{by} | {message} |")
    asked = {(lib.full_name, lib.tag) for lib in wanted}
    built = {(r.library, r.tag) for r in rows if r.status == "succeeded"}
    ok = len(asked & built)
    lines.append("")
    lines.append(f"{ok}/{len(asked)} requested libraries built; "
                 f"{sum(r.status == 'succeeded' for r in rows)}/{len(rows)} builds in all "
                 "(dependencies included)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="DIR/<owner>/<name> git repositories")
    parser.add_argument("--prepare", type=Path, metavar="MIRRORS",
                        help="first make DIR from fetched mirrors (MIRRORS/<owner>+<name>/repo)")
    parser.add_argument("--list", type=Path, help="lines `owner/name [tag]` (default: all of DIR)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--keep", action="store_true", help="keep the server's directory and log")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=600, help="builds.timeout of the server")
    parser.add_argument("--deadline", type=int, default=3600, help="stop waiting after (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = args.corpus.resolve()
    if args.prepare:
        prepare(args.prepare.resolve(), corpus)
    wanted = libraries(corpus, args.list)
    if not wanted:
        print(f"no libraries in {corpus}", file=sys.stderr)
        return 2
    log.info("building %d libraries: %s", len(wanted),
             ", ".join(f"{lib.full_name} {lib.tag}" for lib in wanted))
    began = time.monotonic()
    rows = run(corpus, wanted, args.keep, args.workers, args.timeout, args.deadline)
    text = table(rows, wanted) + f"\n\nwall time: {time.monotonic() - began:.0f} s\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
