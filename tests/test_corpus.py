"""bench/corpus.py's choices, on repositories made here (never the fetched corpus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import corpus

from . import projects


def test_each_library_at_its_newest_version_tag(repos_dir: Path) -> None:
    projects.git_repo(repos_dir / "acme" / "lib", projects.rebar_project("lib"), tag="v1.9.0",
                      extra_tags=("1.10.0", "2.0.0-rc1", "latest"))
    projects.git_repo(repos_dir / "acme" / "untagged", projects.rebar_project("untagged"), tag=None)
    assert corpus.libraries(repos_dir, None) == [corpus.Library("acme", "lib", "1.10.0")]
    listing = repos_dir / "list.txt"
    listing.write_text("# comment\nacme/lib v1.9.0\n\nacme/lib\n")
    assert corpus.libraries(repos_dir, listing) == [corpus.Library("acme", "lib", "v1.9.0"),
                                                     corpus.Library("acme", "lib", "1.10.0")]


def test_the_table_counts_requested_libraries_and_shows_dependencies() -> None:
    wanted = [corpus.Library("a", "one", "1.0"), corpus.Library("b", "two", "2.0")]
    rows: list[Any] = [
        corpus.Row("a/one", "1.0", "succeeded", "rebar3", 12.4, "", "built one.ep", "api"),
        corpus.Row("b/two", "2.0", "failed", "", 3.0, "compile", "enot package failed | x", "api"),
        corpus.Row("c/dep", "0.1", "succeeded", "enot", 1.0, "", "built dep.ep",
                   "dependency of a/one 1.0"),
    ]
    text = corpus.table(rows, wanted)
    assert "| a/one | 1.0 | succeeded | rebar3 | 12 s | request | built one.ep |" in text
    assert "| b/two | 2.0 | failed (compile) |  | 3 s | request | enot package failed \\| x |" in text
    assert "| c/dep | 0.1 | succeeded | enot | 1 s | dependency of a/one 1.0 |" in text
    assert "1/2 requested libraries built; 2/3 builds in all" in text
