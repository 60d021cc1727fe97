"""RESULTS.md from the bench's JSON: `python -m bench.report results.json > RESULTS.md`.

`make bench` runs the bench with `--json` and then this, so the figures in RESULTS.md
always come from one run and name the commit and the machine they were measured on.
Nothing here is typed by hand: a figure that is not in the JSON is not in the page.

A "met" on a ratio the machine's noise moves says how far it can be trusted: its
margin over the target, and the spread of the ratio over the interleaved rounds (the
table keeps the best round; when some round missed the target, the page says so).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


def target_of(text: str) -> tuple[str, float] | None:
    """">= 0.9" -> (">=", 0.9); None for targets that are not a bound on the figure."""
    match = re.fullmatch(r"\s*(>=|<=)\s*([0-9.]+)\s*", text or "")
    return (match[1], float(match[2])) if match else None


def verdict(row: dict[str, Any]) -> str:
    """The "met" cell: yes or NO, with the margin and the rounds' spread when known."""
    if row["passed"] is None:
        return "-"
    word = "yes" if row["passed"] else "**NO**"
    bound = target_of(row["target"])
    value = row["value"]
    if bound is None or value is None:
        return word
    op, limit = bound
    margin = (value - limit) / limit if op == ">=" else (limit - value) / limit
    parts = [f"margin {margin:+.0%}"]
    rounds = row.get("rounds") or []
    if len(rounds) > 1:
        met = [r >= limit if op == ">=" else r <= limit for r in rounds]
        parts.append(f"rounds {min(rounds):.3g}–{max(rounds):.3g}")
        if row["passed"] and not all(met):
            parts.append(f"met in {sum(met)} of {len(rounds)} rounds only")
    return f"{word} ({', '.join(parts)})"


def render(document: dict[str, Any], source: str) -> str:
    commit = document["commit"]
    machine = document["machine"]
    args = document.get("arguments") or {}
    lines = [
        "# Latest bench figures",
        "",
        f"Commit `{commit['sha'][:12]}` ({commit['subject']}, {commit['date']}), measured "
        f"{document['finished']}; the whole run took {document['elapsed_seconds']} s.",
    ]
    if commit.get("uncommitted_changes"):
        lines.append(f"The work tree differed from that commit in: "
                     f"{', '.join(commit['uncommitted_changes'])}.")
    lines += [
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "Run: `python -m bench " + " ".join(_arguments(args)) + "`"
        f" (written by `bench/report.py` from `{source}`).",
        "",
        "Each figure is next to its reference measured in the same run; ratios keep the "
        "best of the interleaved rounds, and *met* gives the margin over the target and "
        "the ratio's range over the rounds.",
        "",
        "| scenario | measured | reference | ratio / figure | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        value = "" if row["value"] is None else f"{row['value']:.3f}"
        measured = row["measured"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(f"| {row['scenario']} | {measured} | {row['reference']} | {value} | "
                     f"{row['target']} | {verdict(row)} |")
    missed = [row["scenario"] for row in document["rows"] if row["passed"] is False]
    lines += ["", ("Missed: " + "; ".join(missed) + ".") if missed else "Every target met."]
    return "\n".join(lines) + "\n"


def _arguments(args: dict[str, Any]) -> list[str]:
    out = []
    for key, value in args.items():
        if value in (None, False) or key == "json":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [f"{flag} {v}" for v in value]
        else:
            out.append(f"{flag} {value}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="the file `python -m bench --json FILE` wrote")
    parser.add_argument("-o", "--output", help="write here instead of standard output")
    args = parser.parse_args(argv)
    document = json.loads(Path(args.json).read_text())
    if not isinstance(document, dict) or "commit" not in document:
        print(f"{args.json}: not the bench's JSON (no commit): run `python -m bench --json`",
              file=sys.stderr)
        return 2
    text = render(document, Path(args.json).name)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
