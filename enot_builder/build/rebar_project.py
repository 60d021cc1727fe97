"""What a rebar project declares, as the fallback reads it (fallback.py runs the reading).

`rebar_config.escript` prints the facts of the project's evaluated rebar.config one a
line; `parse_description` reads them (bounded, unknown lines ignored, names checked)
into a `RebarProject`, which says which compilers to try and which dependencies the
package's enot_config.json lists.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import validation

# Bounds on what a project's description may make us do.
MAX_DECLARED = 200


class Compiler(enum.StrEnum):
    """What built an artifact (recorded with the build, shown on its pages)."""
    ENOT = "enot"
    REBAR3 = "rebar3"
    REBAR = "rebar"


@dataclass(frozen=True)
class DeclaredDependency:
    """A dependency as rebar.config declares it."""
    name: str
    kind: str  # "git", "hex" or "other"
    url: str | None = None
    pin: str | None = None  # "tag", "branch" or "ref" for git; None for hex
    value: str | None = None  # the tag, branch or ref; the version requirement for hex


@dataclass
class RebarProject:
    port_specs: bool = False
    plugins: list[str] = field(default_factory=list)
    dependencies: list[DeclaredDependency] = field(default_factory=list)

    @property
    def compilers(self) -> list[Compiler]:
        """The compilers to try, in order."""
        # rebar3 builds port_specs only through the pc plugin, never fetched offline.
        return [Compiler.REBAR] if self.port_specs else [Compiler.REBAR3, Compiler.REBAR]


DEP_LINE = re.compile(r"dep (\S+) (git|hex|other)(?: (.*))?")


def parse_description(output: str) -> RebarProject:
    """What rebar_config.escript printed, line by line; lines it cannot read are ignored."""
    project = RebarProject()
    for line in output.splitlines()[: 2 * MAX_DECLARED]:
        line = line.rstrip("\r")
        if line == "port_specs":
            project.port_specs = True
        elif line.startswith("plugin "):
            project.plugins.append(line[len("plugin "):])
        elif (match := DEP_LINE.fullmatch(line)) and len(project.dependencies) < MAX_DECLARED:
            name, kind, rest = match.groups()
            if not validation.NAME_PART.fullmatch(name):
                continue
            if kind == "git":
                parts = (rest or "").split(" ", 2)
                if len(parts) == 3 and parts[1] in ("tag", "branch", "ref"):
                    project.dependencies.append(DeclaredDependency(name, "git", parts[0], parts[1],
                                                                   parts[2]))
            elif kind == "hex":
                project.dependencies.append(DeclaredDependency(name, "hex", value=rest or "any"))
            else:
                project.dependencies.append(DeclaredDependency(name, "other"))
    return project


def is_rebar_project(src: Path) -> bool:
    """A project rebar describes: rebar.config (or its script) and no enot_config.json."""
    def regular(name: str) -> bool:
        path = src / name
        return path.is_file() and not path.is_symlink()
    return (regular("rebar.config") or regular("rebar.config.script")) \
        and not (src / "enot_config.json").exists()


def tag_version(tag: str) -> str:
    """The version rebar3 gives `{vsn, git}` on a tagged commit: the tag without a
    leading "v", and of a tag with slashes (repo/proj/1.0) its last part."""
    last = tag.split("/")[-1] or tag
    return last[1:] if last.startswith("v") and len(last) > 1 else last


def enot_dependencies(project: RebarProject,
                      resolved: dict[str, tuple[str, str]] | None = None) -> list[dict[str, str]]:
    """The package's dependencies as enot writes them into enot_config.json.

    `resolved` maps a name to the (url, tag) the server resolved it to (registry
    dependencies, branches pinned to a commit); git dependencies pinned to a tag need
    none. A registry dependency left unresolved keeps its version as the tag, as enot
    itself writes it (the enot client then asks the registry for its repository).
    """
    deps = []
    for dep in project.dependencies:
        if resolved and dep.name in resolved:
            url, tag = resolved[dep.name]
            deps.append({"name": dep.name, "url": url, "tag": tag})
        elif dep.kind == "git" and dep.url:
            key = "tag" if dep.pin == "tag" else "branch"
            deps.append({"name": dep.name, "url": strip_git(dep.url), key: dep.value or ""})
        elif dep.kind == "hex" and dep.value and re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", dep.value):
            deps.append({"name": dep.name, "tag": dep.value})
    return deps


def strip_git(url: str) -> str:
    return url[:-4] if url.endswith(".git") else url
