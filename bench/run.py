"""enot-builder benchmark suite: `python -m bench` (or `make bench`).

Starts the server as a real process on a fresh data dir (its own private PostgreSQL
cluster), loads it from this process over 127.0.0.1 only, and prints each figure
next to its reference measured in the same run, as a ratio against the target.
Everything it starts it stops, and its temp directory is removed (--keep keeps it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from . import scale, scenarios
from .harness import VENV_BIN, Server, Workdir, Wrk, machine
from .scenarios import Row

log = logging.getLogger("bench")

ALL = ("listings", "downloads", "memory", "build", "webhooks", "workers", "claims")


def erl_release() -> str:
    return subprocess.run(["erl", "-noshell", "-eval",
                           'io:format("~s",[erlang:system_info(otp_release)]),halt().'],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=ALL,
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run (6)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved wrk rounds per comparison, best kept (3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--builds", type=int, default=3, help="timed builds each way (3)")
    parser.add_argument("--webhooks", type=int, default=1000, help="deliveries in the burst")
    parser.add_argument("--clients", type=int, default=50, help="clients of the big download")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big artifact")
    parser.add_argument("--scale-builds", type=int, default=12,
                        help="builds per round of the workers scenario (12)")
    parser.add_argument("--scale-rounds", type=int, default=2,
                        help="rounds of one and of two worker processes (2)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the results as JSON (bench/report.py makes "
                             "RESULTS.md from it)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    wanted = args.only or list(ALL)
    started = time.monotonic()
    erl = erl_release()
    rows: list[Row] = []
    with Workdir(args.keep) as workdir:
        wrk = Wrk(workdir, args.duration, args.connections)
        servers: list[Server] = []
        try:
            if "listings" in wanted:
                # The production app plus the constant route, in processes of their own,
                # one on a database of 1,000 builds, one on 1,000,000.
                log.info("== listings: two servers with /bench/constant (bench/bench_app.py)")
                small, large = Server(workdir, "listings-1k"), Server(workdir, "listings-1M")
                servers += [small, large]
                for s in (small, large):
                    s.start([str(VENV_BIN / "python"), "-m", "bench.bench_app"])
                rows += _guard("listings", lambda: scenarios.listings(small, large, wrk, erl,
                                                                      args.rounds))
                for s in (small, large):
                    s.stop()
            # The server alone: the production app plus /bench/constant, the route the
            # download of a cached small artifact is compared with.
            server = Server(workdir, "serve", workers=1)
            servers.append(server)
            log.info("== enot-builder (bench/bench_app.py) on port %d, data in %s",
                     server.port, server.data_dir)
            server.start([str(VENV_BIN / "python"), "-m", "bench.bench_app"])
            if "downloads" in wanted:
                log.info("== downloads: nginx static, deploy/nginx.conf in front, the server alone")
                rows += _guard("downloads", lambda: scale.downloads(
                    server, workdir, wrk, erl, args.rounds))
            if "memory" in wanted:
                log.info("== memory: %d clients x %d MiB", args.clients, args.big_mib)
                rows += _guard("memory", lambda: scenarios.memory(
                    server, erl, args.clients, args.big_mib * scenarios.MiB))
            if "build" in wanted:
                log.info("== build: POST /buildSync vs by hand")
                rows += _guard("build", lambda: scenarios.build(server, workdir, erl,
                                                                args.builds))
            if "webhooks" in wanted:
                log.info("== webhooks: %d deliveries", args.webhooks)
                rows += _guard("webhooks", lambda: scenarios.webhooks(server, args.webhooks,
                                                                      concurrency=100))
            server.stop()
            if {"workers", "claims"} & set(wanted):
                with scale.SharedCluster(workdir) as shared:
                    if "workers" in wanted:
                        log.info("== workers: builds/min with one and two worker processes")
                        rows += _guard("workers", lambda: scale.workers(
                            shared, workdir, erl, args.scale_builds, args.scale_rounds))
                    if "claims" in wanted:
                        log.info("== claims: 100,000 queued builds vs 100")
                        rows += _guard("claims", lambda: scale.claims(shared, args.rounds))
        finally:
            for s in servers:
                s.stop()
    elapsed = time.monotonic() - started
    info = machine()
    report = render(rows, info, elapsed)
    print(report)
    if args.json:
        document = {
            "commit": commit(),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "elapsed_seconds": round(elapsed),
            "arguments": vars(args),
            "machine": info,
            "rows": [row.__dict__ for row in rows],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(row.passed is None and row.note.startswith("error") for row in rows) else 0


def commit() -> dict[str, object]:
    """The commit measured, and whether the work tree differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                              cwd=Path(__file__).resolve().parent.parent).stdout.rstrip("\n")
    # Porcelain lines are "XY path": the status letters may begin with a space.
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
               .splitlines() if not line.endswith(("bench/RESULTS.md", "bench/results.json"))]
    return {"sha": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "date": git("log", "-1", "--format=%cI"), "uncommitted_changes": changed}


def _guard(name: str, run) -> list[Row]:  # type: ignore[no-untyped-def]
    """One broken scenario is reported as such; the others still run."""
    try:
        return run()
    except Exception as e:
        log.exception("scenario %s failed", name)
        return [Row(name, "", "", None, "", None, f"error: {type(e).__name__}: {e}")]


def render(rows: list[Row], info: dict[str, str], elapsed: float) -> str:
    lines = [
        f"## enot-builder bench, {datetime.date.today().isoformat()}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"Whole run: {elapsed:.0f} s",
        "",
        "| scenario | measured | reference | ratio / figure | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        value = "" if row.value is None else f"{row.value:.3f}"
        met = {True: "yes", False: "**NO**", None: "-"}[row.passed]
        measured = row.measured + (f" ({row.note})" if row.note else "")
        lines.append(f"| {row.scenario} | {measured} | {row.reference} | {value} | "
                     f"{row.target} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
