"""How a build subprocess is isolated and limited.

Every step of a build (git clone, enot) runs as

    prlimit <limits> -- [setpriv <build user>] -- bwrap <namespaces, mounts> -- env -i <env> cmd

- prlimit bounds CPU time, address space, processes and the size of files written;
- setpriv drops to an unprivileged build user when the server is root, so that the
  process limit counts the build's processes and nothing it does is done as root;
- bwrap gives a private mount, PID, IPC and UTS namespace (and network, unless builds
  may use it) where the system directories are read-only, only the build's own work
  directory is writable, /tmp is private, and nothing of the server's (config, data
  directory, database socket, other builds) exists. --die-with-parent and the PID
  namespace make the whole process tree die with the step or with the server;
- the environment holds only what the build needs.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .config import BuildsConfig
from .toolchains import ErlangInstallation, Toolchain

SANDBOX_ROOT = "/build"
# Files of /etc a build may read: name resolution and TLS roots for https clones,
# the user database for tools that look themselves up, and Debian's alternatives.
ETC_FILES = ("resolv.conf", "hosts", "nsswitch.conf", "passwd", "group", "ssl",
             "ca-certificates", "ca-certificates.conf", "alternatives", "ld.so.cache",
             "ld.so.conf", "ld.so.conf.d", "localtime", "gitconfig", "mime.types")
# Merged-/usr systems make these links; others have real directories.
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxError(Exception):
    pass


@dataclass(frozen=True)
class BuildUser:
    uid: int
    gid: int
    name: str


@dataclass
class Sandbox:
    config: BuildsConfig
    toolchain: Toolchain
    # Paths the tools themselves live in (enot's virtualenv and its Python, Erlang
    # installations outside /usr): bound read-only into every sandbox.
    tool_paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tool_paths = _tool_paths(self.toolchain)

    @property
    def isolated(self) -> bool:
        return self.config.sandbox == "bwrap"

    @property
    def mode(self) -> str:
        if self.isolated:
            return "bubblewrap sandbox" + ("" if self.config.network else ", no network")
        return "UNSANDBOXED (allow_unsandboxed = true): builds run with the server's rights"

    def root_for(self, work_dir: Path) -> str:
        """Where a build sees its work directory."""
        return SANDBOX_ROOT if self.isolated else str(work_dir)

    def build_user(self) -> BuildUser | None:
        """The user builds run as when the server is root; None to stay who we are."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.config.build_user)
        except KeyError:
            raise SandboxError(f"build user {self.config.build_user!r} does not exist") from None
        if entry.pw_uid == 0:
            raise SandboxError("[builds] build_user must not be root")
        return BuildUser(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def prepare_work_dir(self, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        user = self.build_user()
        if user is not None:
            os.chown(work_dir, user.uid, user.gid)

    def command(self, argv: list[str], *, work_dir: Path, cwd: str, env: dict[str, str],
                erlang: ErlangInstallation | None = None, network: bool | None = None,
                read_only: tuple[Path, ...] = ()) -> list[str]:
        """The full command line that runs `argv` for one build step."""
        if network is None:
            network = self.config.network
        path = ":".join(([str(erlang.bin_dir)] if erlang else []) + ["/usr/local/bin", "/usr/bin", "/bin"])
        clean_env = {"PATH": path, "LANG": "C.UTF-8", "TERM": "dumb", **env}
        limits = ["prlimit",
                  f"--cpu={self.config.cpu_time}",
                  f"--as={self.config.memory_limit_mb * 1024 * 1024}",
                  f"--nproc={self.config.max_processes}",
                  f"--fsize={self.config.max_file_size_mb * 1024 * 1024}",
                  "--core=0", "--"]
        env_args = ["env", "-i", *(f"{k}={v}" for k, v in clean_env.items())]
        if not self.isolated:
            return [*limits, *env_args, *argv]
        if self.toolchain.bwrap is None:
            raise SandboxError("bubblewrap is not installed")
        user = self.build_user()
        drop = ([shutil.which("setpriv") or "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
                 "--clear-groups", "--inh-caps=-all", "--"] if user else [])
        bwrap = [str(self.toolchain.bwrap), "--die-with-parent", "--new-session",
                 "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--hostname", "enot-build"]
        if not network:
            bwrap.append("--unshare-net")
        bwrap += ["--ro-bind", "/usr", "/usr"]
        for name in ROOT_LINKS:
            target = Path("/") / name
            if target.is_symlink():
                bwrap += ["--symlink", os.readlink(target), f"/{name}"]
            elif target.is_dir():
                bwrap += ["--ro-bind", str(target), f"/{name}"]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                bwrap += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        # Mounts apply in order: the private /tmp first, so that tools or sources that
        # live below /tmp stay visible on top of it.
        bwrap += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for extra in [*self.tool_paths, *read_only]:
            if extra.exists():
                bwrap += ["--ro-bind", str(extra), str(extra)]
        bwrap += ["--bind", str(work_dir), SANDBOX_ROOT, "--chdir", cwd, "--"]
        return [*limits, *drop, *bwrap, *env_args, *argv]


def _tool_paths(toolchain: Toolchain) -> list[Path]:
    paths: list[Path] = []
    for installation in toolchain.erlangs.values():
        paths.append(installation.root)
    if toolchain.enot is not None:
        venv = toolchain.enot.resolve().parent.parent
        paths.append(venv)
        home = _venv_home(venv)
        if home is not None:
            paths.append(home.parent)  # the base Python's prefix
    # Anything under /usr is bound already; keep the rest, without duplicates.
    unique = []
    for p in paths:
        p = p.resolve()
        if not p.is_relative_to("/usr") and p not in unique:
            unique.append(p)
    return unique


def _venv_home(venv: Path) -> Path | None:
    try:
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip())
    except OSError:
        pass
    return None
