"""validation.py: ref_problem against the real `git check-ref-format`, fullmatch, file
URLs, and clone URLs held to exactly the package's own repository."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enot_builder import validation
from enot_builder.config import GitConfig
from enot_builder.domain import InvalidInput
from enot_builder.errors import status_of
from enot_builder.validation import MAX_REF_LENGTH, ref_problem, same_repository

from . import projects
from .conftest import wait_for_status

# Characters git treats specially in ref names, and a few ordinary ones.
ALPHABET = "ab1.-/@{}~^:?*[]\\ \t\x01\x7f_lockéé$'\"`;|<>#!"


def git_accepts(ref: str) -> bool:
    result = subprocess.run(["git", "check-ref-format", f"refs/tags/{ref}"],
                            check=False, capture_output=True, timeout=10)
    return result.returncode == 0


def stricter_than_git(ref: str) -> bool:
    """The refs we refuse on purpose although git takes them."""
    return ref.startswith("-") or ref == "@" or len(ref) > MAX_REF_LENGTH


def check(ref: str) -> None:
    ours = ref_problem(ref) is None
    gits = git_accepts(ref)
    if ours:
        assert gits, f"we accept {ref!r}, git refuses it"
    elif gits:
        assert stricter_than_git(ref), f"we refuse {ref!r} ({ref_problem(ref)}), git takes it"


@pytest.mark.parametrize("ref", [
    "1.0.0", "v1.2.3-rc.1", "release/1.0", "a.lock/b", "a/b.lock", "x.lock", ".hidden",
    "a/.b", "a..b", "a//b", "a/", "/a", "a.", "@", "a/@", "@{1}", "a@{b", "a b", "a\tb",
    "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "-x", "--upload-pack=x", "é", "a" * 256,
    "a\x7f", ".", "..", "a/./b", "{}", "a$b", "a'b",
])
def test_known_refs_agree_with_git(ref: str) -> None:
    check(ref)


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=ALPHABET, min_size=1, max_size=12))
def test_generated_refs_agree_with_git(ref: str) -> None:
    check(ref)


def test_nul_is_refused() -> None:
    # git never sees it (argv cannot carry it): we must refuse it ourselves.
    assert ref_problem("a\x00b") is not None


# Issue 14: each was accepted for comtihon/erl_json and bound the name to someone else.
SQUATTING_URLS = [
    "https://github.com/attacker/comtihon/erl_json",
    "https://gitlab.com/attacker-group/comtihon/erl_json",
    "https://github.com/attacker/comtihon/erl_json.git",
    "https://github.com/comtihon/erl_json/tree/main",
    "https://github.com//comtihon/erl_json",
    "https://github.com/comtihon/erl_json/.git",
]


async def test_squatting_urls_are_refused_and_the_owner_then_builds(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    make_repo("comtihon/erl_json", projects.enot_project("erl_json"))
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"})
    for url in SQUATTING_URLS:
        r = await client.post("/buildAsync", json={"full_name": "comtihon/erl_json",
                                                   "clone_url": url,
                                                   "versions": [{"ref": "1.0.0"}]})
        assert r.status == 400, (url, await r.text())
        answer = await r.json()
        assert answer["result"] is False
        assert "'clone_url' must name a repository exactly" in answer["response"], answer
        with db_conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM repositories)"
                        " + (SELECT count(*) FROM builds)")
            assert cur.fetchone()[0] == 0, url
    owner = "https://github.com/comtihon/erl_json/"
    r = await client.post("/buildAsync", json={"full_name": "comtihon/erl_json",
                                               "clone_url": owner,
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202, await r.text()
    [entry] = (await r.json())["response"]
    build = await wait_for_status(client, entry["build_id"], ("succeeded", "failed"))
    assert build["status"] == "succeeded", build["message"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT clone_url, host, bound_by FROM repositories")
        assert cur.fetchall() == [(owner, "github.com", "request")]


@pytest.mark.parametrize("a,b,same", [
    ("https://github.com/a/b", "https://github.com/a/b.git/", True),
    ("https://github.com/a/b", "https://GitHub.com:443/A/B", True),
    ("https://github.com/a/b", "https://gitlab.com/a/b", False),
    ("https://github.com/a/b", "https://github.com/x/a/b", False),
    ("file:///srv/a/b", "file:///srv/a/b.git", True),
    ("file:///srv/a/b", "file:///srv/A/b", False),
    ("file:///github.com/a/b", "https://github.com/a/b", False),
])
def test_same_repository_means_same_host_and_path(a: str, b: str, same: bool) -> None:
    assert same_repository(a, b) is same


# Each check with a trailing (or embedded) newline: `^...$` let "a/b\n" through, which
# was accepted, built and stored. The checks must fullmatch.
NEWLINE_CASES = [
    (lambda v: validation.full_name(v), "a/b\n"),
    (lambda v: validation.full_name(v), "a\n/b"),
    (lambda v: validation.name_part(v, "namespace"), "ns\n"),
    (lambda v: validation.name_part(v, "name"), "name\n"),
    (lambda v: validation.ref(v), "1.0.0\n"),
    (lambda v: validation.erl_version(v), "25\n"),
    (lambda v: validation.erl_version(v), "R16B03-1\n"),
    (lambda v: validation.build_versions([{"ref": "1.0", "erl_version": "25\n"}]), None),
    (lambda v: validation.clone_url("https://github.com/a/b\n", GitConfig(), Path("/srv/x")),
     None),
]


@pytest.mark.parametrize("check,value", NEWLINE_CASES)
def test_a_trailing_newline_is_refused(check: object, value: str | None) -> None:
    with pytest.raises(InvalidInput) as refused:
        check(value)  # type: ignore[operator]
    assert status_of(refused.value) == 400


def test_the_same_values_without_the_newline_pass() -> None:
    assert validation.full_name("a/b") == ("a", "b")
    assert validation.ref("1.0.0") == "1.0.0"
    assert validation.erl_version("R16B03-1") == "R16B03-1"
    assert validation.name_part("ns", "namespace") == "ns"


def test_every_shape_is_applied_as_a_fullmatch() -> None:
    """The shapes carry no anchors, so a `.match` or `.search` left anywhere fails here."""
    for shape in (validation.NAME_PART, validation.ERL_VERSION):
        assert "^" not in shape.pattern and "$" not in shape.pattern
        assert shape.fullmatch("25\n") is None


@pytest.mark.parametrize("where", ["at", "inside", "above", "root"])
def test_file_urls_at_inside_or_above_the_data_dir_are_refused(tmp_path: Path,
                                                               where: str) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "logs").mkdir(parents=True)
    path = {"at": data_dir, "inside": data_dir / "logs", "above": tmp_path, "root": "/"}[where]
    git = GitConfig(allowed_schemes=["file"])
    with pytest.raises(InvalidInput) as refused:
        validation.clone_url(f"file://{path}", git, data_dir)
    assert "must not name the server's data directory" in refused.value.message
    beside = tmp_path / "repos" / "pkg"
    assert validation.clone_url(f"file://{beside}", git, data_dir) == f"file://{beside}"
