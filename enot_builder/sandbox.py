"""How a build subprocess is isolated and limited.

Every step of a build (git clone, enot) runs as

    prlimit <limits> -- [setpriv <build user>] -- bwrap <namespaces, mounts> -- env -i <env> cmd

- the chain starts from an empty environment (`env -i`): bubblewrap's own process is
  PID 1 inside the sandbox, and its /proc/1/environ must not hold the server's;
- prlimit bounds CPU time, address space, processes and the size of files written;
- setpriv drops to an unprivileged build user when the server is root, so that the
  process limit counts the build's processes and nothing it does is done as root;
- bwrap gives a private mount, PID, IPC, UTS and network namespace (a step with
  network gets slirp4netns behind its own one: netstack.py) where the system
  directories are read-only, only the build's own work directory is writable, /tmp
  is private, and nothing of the server's (config, data directory, database socket,
  other builds) exists. --die-with-parent and the PID
  namespace make the whole process tree die with the step or with the server;
- the environment holds only what the build needs.

Limits that are not airtight, on purpose or by the kernel's design:
- RLIMIT_NPROC counts every process of the build user, wherever it runs, so builds
  running at the same time share `max_processes` (as do other processes of that user:
  give builds a user of their own). A fork bomb stops growing at that count, cannot
  leave the PID namespace, and dies with the step at the wall-clock timeout.
- Memory is bounded per process (address space), not per build; the tmpfs mounts
  (/tmp, /dev/shm) are bounded by `max_file_size_mb` each.
- The work directory is on the server's disk: each file is bounded by
  `max_file_size_mb`, their number is not. Keep `storage.data_dir` on a filesystem
  where a full disk hurts only builds.
- With `network = true` a build reaches the internet through slirp4netns, never the
  host's loopback, its own addresses or its Unix sockets; other machines of the host's
  network (and cloud metadata addresses) stay reachable: firewall the build user's
  traffic on the host where they hold anything private (README, "A build's network").
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from .config import BuildsConfig
from .netstack import StepNetwork
from .toolchains import ErlangInstallation, Toolchain

SANDBOX_ROOT = "/build"
# Files of /etc a build may read: name resolution and TLS roots for https clones,
# the user database for tools that look themselves up, and Debian's alternatives.
# Not /etc/ssl/private (keys), not /etc/gitconfig (may hold credentials or
# url.insteadOf rewrites), not /etc/shadow or anything else of the host's.
ETC_FILES = ("resolv.conf", "hosts", "nsswitch.conf", "passwd", "group", "ssl/certs",
             "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "alternatives",
             "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "mime.types")
# What the commands that build the sandbox itself (env, prlimit, setpriv, bwrap) see.
OUTER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Merged-/usr systems make these links; others have real directories.
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxError(Exception):
    pass


@dataclass
class Command:
    """One step's command line and, for a step with network, the network to bring up
    once it started (process.run does both)."""
    argv: list[str]
    network: StepNetwork | None = None


@dataclass(frozen=True)
class BuildUser:
    uid: int
    gid: int
    name: str


@dataclass
class Sandbox:
    config: BuildsConfig
    toolchain: Toolchain
    # Paths no build may see, not even through a bound parent directory: the data
    # directory (artifacts, logs, other builds' work, the private cluster's socket).
    protected: tuple[Path, ...] = ()
    # Paths the tools themselves live in (enot's virtualenv and its Python, Erlang
    # installations outside /usr): bound read-only into every sandbox.
    tool_paths: list[Path] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.tool_paths = _tool_paths(self.toolchain)

    @property
    def isolated(self) -> bool:
        return self.config.sandbox == "bwrap"

    @property
    def mode(self) -> str:
        if self.isolated:
            return "bubblewrap sandbox, " + ("own network namespace, outbound through slirp4netns"
                                             if self.config.network else "no network")
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
            # The lookup reads /etc/passwd: out of descriptors it fails like an unknown
            # user would. Opening a file tells the two apart (it raises EMFILE).
            os.close(os.open(os.devnull, os.O_RDONLY))
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
                read_only: tuple[Path, ...] = (),
                sockets: tuple[tuple[Path, str], ...] = ()) -> Command:
        """The full command line that runs `argv` for one build step.

        `network` (default: the builds.network setting) gives the step a network of its
        own (netstack.py); without it, it has only its own loopback.
        """
        if network is None:
            network = self.config.network
        path = ":".join(([str(erlang.bin_dir)] if erlang else []) + ["/usr/local/bin", "/usr/bin", "/bin"])
        clean_env = {"PATH": path, "LANG": "C.UTF-8", "TERM": "dumb", **env}
        outer = ["env", "-i", f"PATH={OUTER_PATH}"]
        limits = ["prlimit",
                  f"--cpu={self.config.cpu_time}",
                  f"--as={self.config.memory_limit_mb * 1024 * 1024}",
                  f"--nproc={self.config.max_processes}",
                  f"--fsize={self.max_file_size}",
                  "--core=0", "--"]
        env_args = ["env", "-i", *(f"{k}={v}" for k, v in clean_env.items())]
        if not self.isolated:
            # No bwrap --chdir here: the step starts in `cwd` through env's own.
            return Command([*outer, *limits, "env", "-i", f"--chdir={cwd}", *env_args[2:],
                            *argv])
        if self.toolchain.bwrap is None:
            raise SandboxError("bubblewrap (bwrap) is not installed, and builds without a "
                               'sandbox are not allowed ([builds] sandbox = "none" with '
                               "allow_unsandboxed = true would allow them)")
        if network and self.toolchain.slirp4netns is None:
            raise SandboxError(self.toolchain.network_problem(self.config) or "")
        drop = self.drop_privileges()
        # --disable-userns: no nested user namespace, in which the build would get
        # capabilities back (to mount, to change its view of the files).
        bwrap = [str(self.toolchain.bwrap), "--die-with-parent", "--new-session",
                 "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc",
                 "--unshare-uts", "--unshare-cgroup-try", "--hostname", "enot-build"]
        # Never the host's network namespace: a new one, empty or with slirp4netns
        # behind it (its options come last, once nothing can fail: they hold pipes).
        bwrap.append("--unshare-net")
        bwrap += ["--ro-bind", "/usr", "/usr"]
        for name in ROOT_LINKS:
            target = Path("/") / name
            if target.is_symlink():
                bwrap += ["--symlink", os.readlink(target), f"/{name}"]
            elif target.is_dir():
                bwrap += ["--ro-bind", str(target), f"/{name}"]
        for name in ETC_FILES:
            if name == "resolv.conf" and network:
                continue  # the step's own (netstack.RESOLV_CONF)
            if (Path("/etc") / name).exists():
                bwrap += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        # The tmpfs mounts live in memory: each is bounded like a written file. Mounts
        # apply in order: the private /tmp first, so that tools or sources that live
        # below /tmp stay visible on top of it.
        size = str(self.max_file_size)
        bwrap += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm",
                  "--size", size, "--tmpfs", "/tmp"]
        for extra in [*self.tool_paths, *read_only]:
            if extra.exists():
                self._check_exposure(extra)
                bwrap += ["--ro-bind", str(extra), str(extra)]
        for socket_path, inside in sockets:  # Unix sockets a step may connect to
            self._check_exposure(socket_path)
            bwrap += ["--ro-bind", str(socket_path), inside]
        self._check_exposure(work_dir, own=True)
        bwrap += ["--bind", str(work_dir), SANDBOX_ROOT]
        step_network = None
        if network:
            assert self.toolchain.slirp4netns is not None
            step_network = StepNetwork(self.toolchain.slirp4netns, [*outer, *drop])
            bwrap += step_network.bwrap_args()
        # bwrap's root and /dev are tmpfs mounts the build could fill: read-only once
        # everything is mounted on them (mounts below keep their own flags).
        bwrap += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", cwd, "--"]
        return Command([*outer, *limits, *drop, *bwrap, *env_args, *argv], step_network)

    def drop_privileges(self) -> list[str]:
        """setpriv to the build user, when the server is root; else nothing."""
        user = self.build_user()
        return (["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
                 "--clear-groups", "--inh-caps=-all", "--"] if user else [])

    @property
    def max_file_size(self) -> int:
        return self.config.max_file_size_mb * 1024 * 1024

    def _check_exposure(self, path: Path, own: bool = False) -> None:
        """Refuse a bind that would show a build a protected directory.

        A build's own work directory lives below the data directory (`own`); anything
        else bound (tools, a file:// source) must be neither inside a protected
        directory nor one of its parents, nor the root.
        """
        resolved = path.resolve()
        if resolved == Path("/"):
            raise SandboxError("refusing to show the whole file system to a build")
        for protected in self.protected:
            protected = protected.resolve()
            if protected.is_relative_to(resolved) or (not own and resolved.is_relative_to(protected)):
                raise SandboxError(f"{path} would show the server's data directory to the build")


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
