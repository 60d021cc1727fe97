"""bench/report.py: RESULTS.md from the bench's JSON, naming the commit and the machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report


def document(**row: Any) -> dict[str, Any]:
    base = {"scenario": "POST /get vs GET /download (30 KB)", "measured": "611 req/s",
            "reference": "860 req/s", "value": 0.85, "target": ">= 0.8", "passed": True,
            "note": "", "rounds": [0.85, 0.78, 0.82]}
    return {
        "commit": {"sha": "0123456789abcdef" * 2 + "01234567", "subject": "Faster /get",
                   "date": "2026-11-24T09:00:00+00:00", "uncommitted_changes": []},
        "finished": "2026-11-24T09:10:00+00:00", "elapsed_seconds": 300,
        "arguments": {"only": None, "duration": 6, "rounds": 3, "json": "x.json",
                      "keep": False},
        "machine": {"nproc": "2", "cpu": "AMD EPYC"},
        "rows": [{**base, **row}],
    }


def test_results_name_the_commit_and_the_machine(tmp_path: Path) -> None:
    source = tmp_path / "results.json"
    source.write_text(json.dumps(document()))
    out = tmp_path / "RESULTS.md"
    assert report.main([str(source), "-o", str(out)]) == 0
    text = out.read_text()
    assert "Commit `0123456789ab` (Faster /get, 2026-11-24T09:00:00+00:00)" in text
    assert "Machine: nproc 2, cpu AMD EPYC." in text
    assert "`python -m bench --duration 6 --rounds 3`" in text
    assert "differed" not in text
    # The best round met the target by 6 %; one of the three rounds missed it.
    assert "| yes (margin +6%, rounds 0.78–0.85, met in 2 of 3 rounds only) |" in text


def test_a_dirty_tree_and_a_miss_are_said() -> None:
    doc = document(value=0.71, passed=False, rounds=[0.63, 0.71])
    doc["commit"]["uncommitted_changes"] = ["enot_builder/api/download.py"]
    text = report.render(doc, "results.json")
    assert "The work tree differed from that commit in: enot_builder/api/download.py." in text
    assert "| **NO** (margin -11%, rounds 0.63–0.71) |" in text
    assert "Missed: POST /get vs GET /download (30 KB)." in text


def test_targets_that_are_not_bounds_have_no_margin() -> None:
    text = report.render(document(target="all accepted, none lost", value=290.2, rounds=None),
                         "results.json")
    assert "| all accepted, none lost | yes |" in text


def test_the_old_list_format_is_refused(tmp_path: Path, capsys: Any) -> None:
    source = tmp_path / "old.json"
    source.write_text(json.dumps([{"scenario": "x"}]))
    assert report.main([str(source)]) == 2
    assert "not the bench's JSON (no commit)" in capsys.readouterr().err
