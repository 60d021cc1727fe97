"""Version requirements of registry dependencies, matched as rebar3 matches them.

rebar3 (rebar_semver, on ec_semver) reads a requirement such as `"~> 6.1.0"`,
`">= 1.0.0 and < 2.0.0"`, `"== 1.2.3"` or a bare `"0.1.9"` (exactly that version):
alternatives are split on ` or ` / `||`, each into clauses on ` and ` / `&&`; a clause
is an operator (`==`, `>=`, `<=`, `>`, `<`, `~>`, none meaning `==`) and a version of
one to four numeric parts with an optional `-pre` and `+build`. Among the registry's
releases it takes the highest that matches, and leaves out pre-releases (and versions
with build metadata) unless the requirement itself holds a `-` or a `+`.

`~>` is the pessimistic operator: `~> 2.1` is `>= 2.1.0 and < 3.0.0`, `~> 2.1.3` is
`>= 2.1.3 and < 2.2.0`, `~> 2.1.3.4` is `>= 2.1.3.4 and < 2.1.4`; `~> 2` is `>= 2`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

# One version, as ec_semver parses one: 1 to 4 numeric parts, -pre, +build.
VERSION = re.compile(r"v?(\d+(?:\.\d+){0,3})(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?")
OPERATORS = ("==", ">=", "<=", "~>", ">", "<")
# A requirement longer than this is not a requirement (and would only cost time).
MAX_REQUIREMENT = 256


class RequirementError(ValueError):
    """The text is not a version requirement rebar3 would accept."""


@dataclass(frozen=True)
class Version:
    numbers: tuple[int, ...]
    pre: tuple[int | str, ...] = ()
    build: tuple[int | str, ...] = ()
    text: str = ""

    @property
    def stable(self) -> bool:
        return not self.pre and not self.build

    def key(self) -> tuple[object, ...]:
        """Sort key: numbers padded to 4 parts; a pre-release before its release;
        numeric identifiers before alphanumeric ones, each compared in kind."""
        numbers = self.numbers + (0,) * (4 - len(self.numbers))
        return (numbers, _identifiers_key(self.pre, release_last=True),
                _identifiers_key(self.build, release_last=False))


def _identifiers_key(identifiers: tuple[int | str, ...], release_last: bool) -> tuple[object, ...]:
    if not identifiers:
        # A release sorts after its pre-releases; no build sorts before any build.
        return (1,) if release_last else (0,)
    parts = tuple((0, item, "") if isinstance(item, int) else (1, 0, item) for item in identifiers)
    return ((0, parts) if release_last else (1, parts))


def _identifiers(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(part) if part.isdigit() else part for part in text.split("."))


def parse_version(text: str) -> Version:
    match = VERSION.fullmatch(text.strip())
    if match is None:
        raise RequirementError(f"{text!r} is not a version")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    return Version(numbers, _identifiers(match.group(2)), _identifiers(match.group(3)),
                   text.strip())


def _pessimistic(bound: Version) -> Callable[[Version], bool]:
    n = bound.numbers
    if len(n) == 1:
        return lambda v: v.key() >= bound.key()
    if len(n) == 2:
        upper = Version((n[0] + 1, 0, 0, 0))
    elif len(n) == 3:
        upper = Version((n[0], n[1] + 1, 0, 0))
    else:
        upper = Version((n[0], n[1], n[2] + 1))
    return lambda v: bound.key() <= v.key() < upper.key()


def _clause(text: str) -> Callable[[Version], bool]:
    text = text.lstrip(" ")
    operator = next((op for op in OPERATORS if text.startswith(op)), "")
    bound = parse_version(text[len(operator):])
    if operator == "~>":
        return _pessimistic(bound)
    compare: dict[str, Callable[[tuple[object, ...], tuple[object, ...]], bool]] = {
        "": lambda a, b: a == b, "==": lambda a, b: a == b,
        ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, "<": lambda a, b: a < b,
    }
    check = compare[operator]
    return lambda v: check(v.key(), bound.key())


@dataclass(frozen=True)
class Requirement:
    text: str
    alternatives: tuple[tuple[Callable[[Version], bool], ...], ...]
    allows_pre: bool

    def matches(self, version: Version) -> bool:
        return any(all(clause(version) for clause in clauses) for clauses in self.alternatives)


def parse_requirement(text: str) -> Requirement:
    """A requirement as rebar3 reads it; RequirementError when it would refuse it."""
    if not text or len(text) > MAX_REQUIREMENT:
        raise RequirementError(f"{text[:MAX_REQUIREMENT]!r} is not a version requirement")
    alternatives = []
    for alternative in re.split(r" or |\|\|", text):
        clauses = tuple(_clause(clause) for clause in re.split(r" and |&&", alternative))
        alternatives.append(clauses)
    # rebar3 allows pre-releases when the requirement text has a '-' or a '+' anywhere.
    return Requirement(text, tuple(alternatives), "-" in text or "+" in text)


def highest_match(requirement: str | None, releases: Iterable[str]) -> str | None:
    """The highest release that `requirement` (None: any) accepts, as rebar3 picks it.

    Releases that are not versions are ignored. RequirementError when the requirement
    is not one.
    """
    parsed = parse_requirement(requirement) if requirement is not None else None
    allows_pre = parsed.allows_pre if parsed is not None else False
    best: Version | None = None
    for text in releases:
        try:
            version = parse_version(text)
        except RequirementError:
            continue
        if not version.stable and not allows_pre:
            continue
        if parsed is not None and not parsed.matches(version):
            continue
        if best is None or version.key() > best.key():
            best = version
    return best.text if best is not None else None
