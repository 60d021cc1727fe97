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


def test_the_registry_stand_in_names_repositories_by_their_application(repos_dir: Path) -> None:
    """hex.pm's answer shape, from the corpus: the registry name is the application's,
    which may differ from the repository's (benoitc/erlang-idna holds idna)."""
    import json
    import urllib.error
    import urllib.request

    projects.git_repo(repos_dir / "benoitc" / "erlang-idna", projects.rebar_project("idna"),
                      tag="6.1.1", extra_tags=("v6.0.0", "latest"))
    with corpus.RegistryStandIn(repos_dir) as registry:
        with urllib.request.urlopen(f"{registry.url}/packages/idna", timeout=10) as r:
            answer = json.load(r)
        assert sorted(release["version"] for release in answer["releases"]) == ["6.0.0", "6.1.1"]
        assert answer["meta"]["links"] == {"GitHub": "https://github.com/benoitc/erlang-idna"}
        try:
            urllib.request.urlopen(f"{registry.url}/packages/erlang-idna", timeout=10)
            raise AssertionError("a repository's name is not a package of the registry")
        except urllib.error.HTTPError as e:
            assert e.code == 404
