"""A package's dependencies, resolved by the server before the package compiles.

The pieces, in the order a build uses them:
- declared.py reads what the package declares (enot_config.json deps, rebar.config
  after rebar.config.script, erlang.mk DEPS with dep_* lines), the rebar part by an
  Erlang script run in the sandbox without network (rebar_deps.escript);
- registry.py and versions.py turn a registry dependency (`{name, "~> 1.0"}`) into a
  repository and a release, through the registry's API, asked by the server;
- graph.py records the dependency edges, queues what is not built yet and makes the
  package wait for it (status `waiting`), releases or fails it when they end.

The types below are what they pass to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

# How deep a tree of dependencies may go (the package itself at depth 0) and how many
# builds one package's tree may queue; past either the build fails saying so.
MAX_DEPTH = 8
MAX_TREE = 200
# Direct dependencies of one package at most.
MAX_DIRECT = 100


@dataclass(frozen=True)
class Declared:
    """One dependency as the package declares it.

    `source` is "git" (url, with a tag, a branch, a commit `ref`, or none of them:
    the default branch), "registry" (`package` with an optional `requirement`), or
    "unsupported" (`problem` says why: hg, a local path, a variable in a Makefile...).
    """
    name: str
    source: str
    url: str | None = None
    tag: str | None = None
    branch: str | None = None
    ref: str | None = None
    revision: str | None = None
    package: str | None = None
    requirement: str | None = None
    problem: str | None = None

    def describe(self) -> str:
        if self.source == "registry":
            return f"{self.name} (registry package {self.package}" + \
                (f" {self.requirement})" if self.requirement else ", any release)")
        if self.source == "git":
            pin = (f"tag {self.tag}" if self.tag else f"branch {self.branch}" if self.branch
                   else f"commit {self.ref}" if self.ref else self.revision or "default branch")
            return f"{self.name} ({self.url} {pin})"
        return f"{self.name} ({self.problem})"


@dataclass(frozen=True)
class Resolved:
    """A dependency the server builds: the repository's clone URL, as the package or
    the registry gives it, and the tag or commit built (`ref`); `how` says, for the
    build log, how it was found."""
    name: str
    clone_url: str
    ref: str
    how: str
