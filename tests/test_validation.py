"""validation.ref_problem against the real `git check-ref-format`, over many strings."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enot_builder.validation import MAX_REF_LENGTH, ref_problem

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
