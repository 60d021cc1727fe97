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
    if toolchain.enot is not None:
        venv = toolchain.enot.resolve().parent.parent
        needs.append(Need(toolchain.enot.resolve(), "the enot tool", ("-r", "-x"),
                          _remedy(toolchain.enot.resolve(), "install enot where builds can read it")))
        home = _venv_home(venv)
        if home is not None:
            python = (venv / "bin" / "python").resolve()
            needs.append(Need(python, "the Python enot runs on", ("-x",),
                              "make enot's virtualenv on the system Python "
                              "(`make clean install` uses /usr/bin/python3)"))
    for path in sandbox.tool_paths:
        needs.append(Need(path, "a directory builds use", ("-r", "-x"),
                          _remedy(path, "install it under /opt or /usr/local")))
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
    found = []
    for index, need in enumerate(needs):
        first = next(((flag, path) for i, flag, path in failed if i == index), None)
        if first is not None:
            found.append(_message(who, need, *first))
    return found


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


def _message(who: Who, need: Need, flag: str, blocked: Path) -> str:
    try:
        info = blocked.stat()
        shown = f"{stat.filemode(info.st_mode)} {_owner(info.st_uid)}"
    except OSError as e:
        shown = e.strerror or "unreadable"
    if blocked.is_dir() and (blocked != _existing(need.path) or "-r" not in need.flags):
        action, fix = "may not pass through", f"chmod o+x {blocked}"
    elif blocked.is_dir():
        action, fix = "may not read", f"chmod -R o+rX {blocked}"
    else:
        action, fix = "may not read or run", f"chmod o+rx {blocked}"
    return (f"{who.describe()} cannot reach {need.path} ({need.what}): it {action} {blocked} "
            f"({shown}); {need.remedy}, or open it: {fix}")


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
