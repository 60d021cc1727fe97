"""Assemble an enot package (.ep) from a project rebar built: run inside the sandbox.

    python3 assemble_ep.py PROJECT EBIN SPEC_JSON OUT_DIR

The same layout `enot package` makes, so that the real enot client installs it:
`ebin/` (from EBIN, where rebar put the compiled application), `priv/`, `include/`,
`src/` and `c_src/` from PROJECT, `enot_config.json` (SPEC_JSON's "config", with
`name` and `app_vsn` from the built .app) and, when SPEC_JSON has "locks", an
`enot_locks.json`; written to OUT_DIR/<application>.ep. EBIN may be a glob (rebar3's
_build/default/lib/*/ebin) that must match one directory. The tar is deterministic:
members in enot's order and sorted within each directory, fixed times, owners, modes.

The enot client runs `make -C c_src` when it installs a package that has `c_src/`
(and, without a Makefile there, its own, which links -lerl_interface: gone since
OTP 23). A project whose NIF rebar built from port_specs has no Makefile there, so
the package gets one that keeps the library rebar built in priv/.

Standard library only: it runs with the system Python of the sandbox. Symbolic
links are followed (the sandbox shows nothing but the build's own files); the
build's file size limit bounds what it reads.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import sys
import tarfile

# enot's order of the top-level entries (enot/packages/package.py generate_package).
TOP_LEVEL = ("ebin", "priv", "src", "include", "c_src")
MTIME = 0
APP_NAME = re.compile(r"\{\s*application\s*,\s*'?([a-z][A-Za-z0-9_@]*)'?\s*,")
APP_VSN = re.compile(r"\{\s*vsn\s*,\s*\"([^\"]*)\"\s*\}")
KEEP_NIF_MAKEFILE = """\
# Written by enot-builder: rebar built this package's native code from the
# port_specs of its rebar.config into ../priv. enot runs `make -C c_src` when it
# installs a package with c_src/: the libraries are there, nothing to build.
LIBRARIES := {libraries}

all:
\t@for lib in $(LIBRARIES); do test -f ../$$lib || {{ echo "missing $$lib"; exit 1; }}; done

clean:

.PHONY: all clean
"""


def main(argv: list[str]) -> int:
    project, ebin_pattern, spec_json, out_dir = argv
    spec = json.loads(spec_json)
    ebins = sorted(glob.glob(ebin_pattern))
    if len(ebins) != 1:
        raise SystemExit(f"expected one compiled application at {ebin_pattern}, found {len(ebins)}")
    ebin = ebins[0]
    name, vsn = application(ebin)
    out = os.path.join(out_dir, f"{name}.ep")
    config = dict(spec["config"])
    config["name"] = name
    config["app_vsn"] = vsn
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for top in TOP_LEVEL:
            source = ebin if top == "ebin" else os.path.join(project, top)
            if os.path.isdir(source):
                add_tree(tar, source, top)
            elif top == "src":
                add_directory(tar, "src")  # enot's client copies src/ of every package
        if os.path.isdir(os.path.join(project, "c_src")) and \
                not os.path.exists(os.path.join(project, "c_src", "Makefile")):
            libraries = sorted(os.path.relpath(os.path.join(directory, entry), project)
                               for directory, _, entries in os.walk(os.path.join(project, "priv"))
                               for entry in entries if entry.endswith(".so"))
            add_file(tar, "c_src/Makefile",
                     KEEP_NIF_MAKEFILE.format(libraries=" ".join(libraries)).encode())
        add_file(tar, "enot_config.json", dumps(config))
        if spec.get("locks"):
            add_file(tar, "enot_locks.json", dumps(spec["locks"]))
    print(f"assembled {out}: {name} {vsn}")
    return 0


def application(ebin: str) -> tuple[str, str]:
    """The name and version of the one application rebar built into EBIN."""
    apps = sorted(entry for entry in os.listdir(ebin) if entry.endswith(".app"))
    if len(apps) != 1:
        raise SystemExit(f"expected one .app in {ebin}, found {len(apps)}: {', '.join(apps)}")
    with open(os.path.join(ebin, apps[0]), encoding="utf-8", errors="replace") as f:
        text = f.read()
    name = APP_NAME.search(text)
    vsn = APP_VSN.search(text)
    if name is None or vsn is None:
        raise SystemExit(f"{apps[0]} has no application name or no literal vsn")
    return name.group(1), vsn.group(1)


def dumps(value: object) -> bytes:
    return json.dumps(value, indent=4, sort_keys=True).encode()


def add_tree(tar: tarfile.TarFile, source: str, name: str) -> None:
    add_directory(tar, name)
    for entry in sorted(os.listdir(source)):
        path = os.path.join(source, entry)
        if os.path.isdir(path):
            add_tree(tar, path, f"{name}/{entry}")
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                add_file(tar, f"{name}/{entry}", f.read(),
                         executable=os.access(path, os.X_OK))


def add_directory(tar: tarfile.TarFile, name: str) -> None:
    info = member(name, tarfile.DIRTYPE, 0o755)
    tar.addfile(info)


def add_file(tar: tarfile.TarFile, name: str, data: bytes, executable: bool = False) -> None:
    info = member(name, tarfile.REGTYPE, 0o755 if executable else 0o644)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def member(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
