"""Whether the unprivileged users can reach what they need, said before anything fails.

Run as root, the server hands its private PostgreSQL to `[database] cluster_user` and
its builds to `[builds] build_user`. A checkout or data directory below a directory
those users cannot enter (root's 0700 home, a pytest tmp_path) otherwise shows up only
as `initdb: Permission denied`, or as bubblewrap's `Can't find source path` inside
every build log while /health says ok. `check` and start-up test it first, and say in
one line which directory is closed and what to do.

The test runs as the user itself (setpriv, with the groups the real process gets), so
ACLs, group membership and mount options count exactly as they will later.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import pgcluster
from .config import PROJECT_ROOT, Config
from .sandbox import BuildUser, Sandbox, SandboxError, _venv_home
from .toolchains import Toolchain

MOVE_CHECKOUT = "move the checkout under /opt or /srv"
# Prints "<index> <test flag> <path>" (NUL-terminated) for every test that fails.
TEST_SCRIPT = ('while [ $# -gt 0 ]; do test "$2" "$3" || printf "%s %s %s\\0" "$1" "$2" "$3"; '
               "shift 3; done")


class ReachabilityError(Exception):
    """The server cannot start: one of its users cannot reach a path it needs."""


@dataclass(frozen=True)
class Need:
    path: Path                 # what the user must reach
    what: str                  # how the message names it
    flags: tuple[str, ...]     # `test` flags the path itself must pass ("-x", "-r")
    remedy: str                # the alternative to opening a directory


@dataclass(frozen=True)
class Who:
    role: str                  # "cluster user", "build user"
    user: BuildUser | None     # None: the server's own user (not root: nothing changes)
    init_groups: bool          # runuser (the cluster) takes the user's groups; builds none

    def describe(self) -> str:
        if self.user is None:
            return f"the server's user {_own_name()}"
        return f"the {self.role} {self.user.name}"


def cluster_problems(config: Config) -> list[str]:
    """What keeps the private cluster's user from its directory (none with a DSN)."""
    if config.database.dsn:
        return []
    user = None
    if os.geteuid() == 0:
        name = pgcluster.for_config(config.data_dir, config.database.cluster_user).user
        assert name is not None
        entry = pwd.getpwnam(name)
        user = BuildUser(entry.pw_uid, entry.pw_gid, entry.pw_name)
    return problems(Who("cluster user", user, init_groups=True),
                    [Need(config.data_dir, "the data directory", ("-x",), _data_remedy(config))])


def build_problems(config: Config, toolchain: Toolchain) -> list[str]:
    """What keeps the build user from the tools and work directories builds use."""
    sandbox = Sandbox(config.builds, toolchain)
    if not sandbox.isolated:
        return []  # unsandboxed builds run as the server itself
    try:
        user = sandbox.build_user()
    except SandboxError as e:
        return [str(e)]
    # The server opens the data directory and work/ for builds itself (prepare_dirs);
    # the way down to it is the operator's.
    needs = [Need(config.data_dir, "the data directory, where builds work", (),
                  _data_remedy(config))]
    # What each directory bubblewrap binds in is, and what to do about it.
    known: dict[Path, tuple[str, str]] = {}
    for installation in toolchain.erlangs.values():
        known[installation.root.resolve()] = ("an Erlang/OTP installation",
                                              "install Erlang/OTP under /opt or /usr/local")
    if toolchain.enot is not None:
        enot = toolchain.enot.resolve()
        venv = enot.parent.parent
        install_enot = _remedy(enot, "install enot where builds can read it (under /opt)")
        needs.append(Need(enot, "the enot tool", ("-r", "-x"), install_enot))
        known[venv] = ("enot's virtualenv", install_enot)
        home = _venv_home(venv)
        if home is not None:
            system_python = ("make enot's virtualenv on the system Python "
                             "(`make clean install` uses /usr/bin/python3)")
            needs.append(Need((venv / "bin" / "python").resolve(), "the Python enot runs on",
                              ("-x",), system_python))
            known[home.parent.resolve()] = ("the Python enot runs on", system_python)
    for path in sandbox.tool_paths:
        what, remedy = known.get(path, ("a directory builds use", "move it under /opt"))
        needs.append(Need(path, what, ("-r", "-x"), remedy))
    return problems(Who("build user", user, init_groups=False), needs)


def problems(who: Who, needs: list[Need]) -> list[str]:
    """One line per need `who` cannot reach: the first closed directory and the fix."""
    tests: list[tuple[int, str, Path]] = []
    for index, need in enumerate(needs):
        target = _existing(need.path)
        for parent in reversed(target.parents):
            tests.append((index, "-x", parent))
        # Not created yet: the server's mkdir will land where the nearest existing
        # directory is, so that one must let the user through.
        for flag in need.flags if target == need.path else ("-x",):
            tests.append((index, flag, target))
    failed = _run_tests(who, tests)
    if isinstance(failed, str):
        return [failed]
    # Needs closed by the same directory make one line: one thing to do.
    blocked: dict[tuple[Path, str, str], list[Need]] = {}
    for index, need in enumerate(needs):
        first = next(((flag, path) for i, flag, path in failed if i == index), None)
        if first is not None:
            flag, path = first
            blocked.setdefault((path, *_closure(need, flag, path)), []).append(need)
    return [_message(who, group, path, action, fix)
            for (path, action, fix), group in blocked.items()]


def require(found: list[str]) -> None:
    if found:
        raise ReachabilityError("; ".join(found))


def _run_tests(who: Who, tests: list[tuple[int, str, Path]]) -> list[tuple[int, str, Path]] | str:
    argv = ["sh", "-c", TEST_SCRIPT, "reachability"]
    for index, flag, path in tests:
        argv += [str(index), flag, str(path)]
    if who.user is not None:
        groups = "--init-groups" if who.init_groups else "--clear-groups"
        argv = ["setpriv", f"--reuid={who.user.uid}", f"--regid={who.user.gid}", groups, "--", *argv]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                                cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot test what {who.describe()} can reach: {e}"
    if result.returncode != 0:
        return (f"cannot test what {who.describe()} can reach: "
                f"{result.stderr.decode(errors='replace').strip()}")
    failed = []
    for record in result.stdout.split(b"\0"):
        if record:
            index, flag, path = os.fsdecode(record).split(" ", 2)
            failed.append((int(index), flag, Path(path)))
    return failed


def _closure(need: Need, flag: str, blocked: Path) -> tuple[str, str]:
    """How `blocked` is closed to the user, and the command that opens it."""
    if blocked.is_dir() and (blocked != _existing(need.path) or "-r" not in need.flags):
        return "may not pass through", f"chmod o+x {blocked}"
    if blocked.is_dir():
        return "may not read", f"chmod -R o+rX {blocked}"
    return "may not read or run", f"chmod o+rx {blocked}"


def _message(who: Who, needs: list[Need], blocked: Path, action: str, fix: str) -> str:
    try:
        info = blocked.stat()
        shown = f"{stat.filemode(info.st_mode)} {_owner(info.st_uid)}"
    except OSError as e:
        shown = e.strerror or "unreadable"
    targets = [f"{need.path} ({need.what})" for need in needs]
    listed = targets[0] if len(targets) == 1 else f"{', '.join(targets[:-1])} and {targets[-1]}"
    remedies = " or ".join(dict.fromkeys(need.remedy for need in needs))
    return (f"{who.describe()} cannot reach {listed}: it {action} {blocked} ({shown}); "
            f"{remedies}, or open it: {fix}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _remedy(path: Path, otherwise: str) -> str:
    return MOVE_CHECKOUT if path.is_relative_to(PROJECT_ROOT) else otherwise


def _data_remedy(config: Config) -> str:
    return _remedy(config.data_dir, "set [storage] data_dir to a directory under /var/lib or /srv")


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _own_name() -> str:
    return _owner(os.geteuid())
