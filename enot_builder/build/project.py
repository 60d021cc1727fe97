"""Inspecting and adapting the package's project: its enot_config.json, its Makefile.

Everything here reads the package's files through package_files (bounded, linkless)
and runs in a thread (package_files.off_loop).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .. import validation
from ..buildlog import BuildLog
from .package_files import create, is_regular, parse_json, read_regular

# Matched against one line of a package's Makefile at a time, anchored at its start,
# with [ \t]* (never \s*, which crosses lines) and no lazy group before a repeat: each
# line costs time linear in its length, so a hostile Makefile costs linear time.
ERLANG_MK_INCLUDE = re.compile(rb"[ \t]*-?include[ \t]+\S*erlang\.mk[ \t\r]*")
MAKE_VARIABLE = re.compile(rb"[ \t]*(PROJECT|PROJECT_DESCRIPTION|PROJECT_VERSION)[ \t]*[:?]?=(.*)")


def package_config(src: Path) -> dict[str, Any] | None:
    """The package's own enot_config.json; None when absent, a link or not a JSON object."""
    raw = read_regular(src / "enot_config.json")
    if raw is None:
        return None
    try:
        config = parse_json(raw, "enot_config.json")
    except ValueError:
        return None  # enot itself says what is wrong with it, in the build log
    return config if isinstance(config, dict) else None


def package_erlang_versions(config: dict[str, Any] | None) -> list[str]:
    """The `erlang` list of the package's enot_config.json, the releases it asks for."""
    wanted = config.get("erlang") if config is not None else None
    if not isinstance(wanted, list):
        return []
    releases = []
    for item in wanted:
        item = str(item) if isinstance(item, int) else item
        if isinstance(item, str) and validation.ERL_VERSION.fullmatch(item) \
                and item not in releases:
            releases.append(item)
    return releases


def has_dependencies(config: dict[str, Any] | None) -> bool:
    """Whether the package may have dependencies to fetch.

    Only an enot_config.json with an empty (or no) `deps` list says no for sure;
    rebar.config and erlang.mk projects are assumed to have some.
    """
    return config is None or bool(config.get("deps"))


def makefile_variables(makefile: bytes) -> dict[str, str] | None:
    """The PROJECT* variables of an erlang.mk Makefile; None if it does not include erlang.mk.

    Line by line, each regex anchored at the start of one line (see ERLANG_MK_INCLUDE):
    linear in the Makefile's size, however hostile it is.
    """
    includes = False
    variables: dict[str, str] = {}
    for line in makefile.split(b"\n"):
        if ERLANG_MK_INCLUDE.fullmatch(line):
            includes = True
        elif match := MAKE_VARIABLE.match(line):
            variables[match.group(1).decode()] = \
                match.group(2).strip(b" \t\r").decode(errors="replace")
    return variables if includes else None


def adapt_project(src: Path, repo_name: str, build_log: BuildLog) -> None:
    """Let enot recognise an erlang.mk project that does not ship erlang.mk itself.

    enot finds a project by enot_config.json, erlang.mk or rebar.config. An erlang.mk
    project often carries only a Makefile that includes erlang.mk (downloaded at build
    time). With our global "compiler": "enot" erlang.mk is never run, so an empty one
    makes enot read the Makefile; and erlang.mk projects may have no .app.src, which we
    write from the Makefile's PROJECT variables. Runs in a thread (off_loop).
    """
    if any(is_regular(src / name) for name in ("enot_config.json", "erlang.mk", "rebar.config")):
        return
    makefile = read_regular(src / "Makefile")
    variables = makefile_variables(makefile) if makefile is not None else None
    if variables is None:
        return
    if os.path.islink(src / "src") or not (src / "src").is_dir():
        return
    create(src / "erlang.mk", b"# placeholder written by enot-builder; enot compiles with erlc\n")
    build_log.line("erlang.mk project without erlang.mk: enot will compile it with erlc")
    project = variables.get("PROJECT", repo_name)
    if not validation.NAME_PART.fullmatch(project):
        return
    has_app_src = any(p.name.endswith(".app.src") for p in (src / "src").iterdir())
    if not has_app_src:
        version = variables.get("PROJECT_VERSION", "0.0.0").replace('"', "")
        description = variables.get("PROJECT_DESCRIPTION", "").replace('"', "")
        app_src = (f'{{application, \'{project}\', [\n  {{description, "{description}"}},\n'
                   f'  {{vsn, "{version}"}},\n  {{registered, []}},\n'
                   f'  {{applications, [kernel, stdlib]}},\n  {{env, []}}\n]}}.\n')
        create(src / "src" / f"{project}.app.src", app_src.encode())
        build_log.line(f"wrote src/{project}.app.src from the Makefile's PROJECT variables")
