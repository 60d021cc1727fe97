"""What builds run with: Erlang/OTP installations, the enot tool, git, bubblewrap and slirp4netns.

Each Erlang installation is keyed by the OTP release it reports itself, never by a
folder name, so a misnamed directory cannot make us build with the wrong Erlang.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT_ROOT, BuildsConfig, Config

log = logging.getLogger(__name__)

RELEASE_PROBE = ('io:format("~s ~s", [erlang:system_info(otp_release), '
                 'erlang:system_info(version)]), halt().')


@dataclass(frozen=True)
class ErlangInstallation:
    release: str       # "25", as erlang:system_info(otp_release) prints it
    root: Path         # the directory holding bin/erl and erts-*/
    erts_version: str  # "13.1.5"
    source: str        # where we found it: "config", "kerl", "system"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"


@dataclass(frozen=True)
class Toolchain:
    erlangs: dict[str, ErlangInstallation]
    enot: Path | None
    enot_version: str | None
    git: Path | None
    bwrap: Path | None
    default_erlang: str | None
    # The user-mode network stack of sandboxed steps that may use the network.
    slirp4netns: Path | None = None

    def problems(self, config: Config) -> list[str]:
        """What keeps this machine from building; empty when it can."""
        found = []
        if not self.erlangs:
            found.append("no Erlang/OTP installation found (install erlang-nox, or set "
                         "[builds] erlang_installations)")
        if self.enot is None:
            found.append("the enot tool was not found (run `make install`, or set [builds] enot)")
        if self.git is None:
            found.append("git was not found")
        if config.builds.sandbox == "bwrap" and self.bwrap is None:
            found.append("bubblewrap (bwrap) was not found; install it, or set [builds] "
                         'sandbox = "none" and allow_unsandboxed = true')
        problem = self.network_problem(config.builds)
        if problem:
            found.append(problem)
        if self.default_erlang is not None and self.default_erlang not in self.erlangs:
            found.append(f"the default Erlang release {self.default_erlang} is not installed")
        return found


    def network_problem(self, builds: BuildsConfig) -> str | None:
        """Why sandboxed builds cannot get a network of their own; None when they can.

        Not a missing tool like the others: without slirp4netns the server refuses to
        start, rather than give builds the host's network (and its loopback).
        """
        if builds.sandbox != "bwrap":
            return None
        if self.slirp4netns is None:
            return ("slirp4netns is not installed: sandboxed builds reach the network (git "
                    "clone, and enot with [builds] network = true) only through it, never "
                    "through the host's own network; install the Debian package slirp4netns")
        return tun_problem(TUN_DEVICE)


# slirp4netns opens it as the build user, from inside the step's user namespace, where
# only the mode's "other" bits count: Debian's udev makes it 0666, a container without
# udev may leave it 0600, and then every networked step would fail.
TUN_DEVICE = Path("/dev/net/tun")


def tun_problem(device: Path) -> str | None:
    try:
        mode = device.stat().st_mode
    except OSError as e:
        return (f"{device} is missing ({e.strerror}): slirp4netns needs it to give a build "
                "step its network; load the tun module (modprobe tun)")
    if mode & 0o006 != 0o006:
        return (f"{device} has mode {stat.S_IMODE(mode):04o}: slirp4netns opens it as the "
                f"build user, so builds cannot get a network; run `chmod 0666 {device}` "
                "(Debian's default; `make system-deps` as root does it)")
    return None


def probe_erlang(root: Path, source: str) -> ErlangInstallation | None:
    erl = root / "bin" / "erl"
    if not erl.is_file():
        log.warning("no bin/erl in Erlang installation %s", root)
        return None
    try:
        result = subprocess.run([str(erl), "-noshell", "-eval", RELEASE_PROBE],
                                capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, env=_erl_env(root))
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot run %s: %s", erl, e)
        return None
    parts = result.stdout.split()
    if result.returncode != 0 or len(parts) != 2:
        log.warning("%s did not report its release: %s", erl, result.stderr.strip())
        return None
    return ErlangInstallation(parts[0], root, parts[1], source)


def _erl_env(root: Path) -> dict[str, str]:
    return {"PATH": f"{root / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


def kerl_installations() -> list[Path]:
    """Installation directories `kerl list installations` knows, when kerl is here."""
    kerl = shutil.which("kerl")
    if kerl is None:
        return []
    try:
        result = subprocess.run([kerl, "list", "installations"], capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("kerl list installations failed: %s", e)
        return []
    # Lines are "<build name> <directory>"; anything else is kerl talking.
    return [Path(parts[-1]) for parts in (line.split() for line in result.stdout.splitlines())
            if len(parts) == 2 and parts[-1].startswith("/")]


def tool_versions(toolchain: Toolchain) -> dict[str, str | None]:
    """What `check` and /health report of each tool."""
    def first_line(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if out.returncode == 0 and lines else None

    return {
        "git": first_line([str(toolchain.git), "--version"]) if toolchain.git else None,
        "enot": toolchain.enot_version,
        "bwrap": first_line([str(toolchain.bwrap), "--version"]) if toolchain.bwrap else None,
        "slirp4netns": (first_line([str(toolchain.slirp4netns), "--version"])
                        if toolchain.slirp4netns else None),
    }


def erts_directory(installation: ErlangInstallation) -> Path | None:
    """The erts-<version> directory of an installation."""
    candidate = installation.root / f"erts-{installation.erts_version}"
    if candidate.is_dir():
        return candidate
    found = sorted(installation.root.glob("erts-*"))
    return found[-1] if found else None


def system_erlang_root() -> Path | None:
    erl = shutil.which("erl")
    if erl is None:
        return None
    # /usr/bin/erl is a link into the installation (Debian: /usr/lib/erlang/bin/erl).
    return Path(erl).resolve().parent.parent


def find_enot(config: Config) -> Path | None:
    if config.builds.enot:
        path = Path(config.builds.enot)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    bundled = PROJECT_ROOT / ".venv-enot" / "bin" / "enot"
    if bundled.is_file():
        # Resolved: a .venv-enot that links to another checkout's must be named where
        # it is, for the sandbox mounts that directory and not the link.
        return bundled.resolve()
    found = shutil.which("enot")
    return Path(found) if found else None


def enot_version(enot: Path) -> str | None:
    """The version from the dist-info beside a virtualenv's enot (enot --version needs a project)."""
    metas = list(enot.parent.parent.glob("lib/python*/site-packages/enot-*.dist-info"))
    if metas:
        return metas[0].name[len("enot-"):-len(".dist-info")]
    return None


def release_order(release: str) -> tuple[int, str]:
    """Sort key of release names: "9" < "24" < "25"; old "R16B03" names sort first."""
    return (int(release), "") if release.isdigit() else (0, release)


def discover(config: Config) -> Toolchain:
    erlangs: dict[str, ErlangInstallation] = {}
    for label, directory in config.builds.erlang_installations.items():
        installation = probe_erlang(Path(directory), "config")
        if installation is None:
            continue
        if installation.release != label:
            log.warning("Erlang installation %s reports release %s, not %s as configured; "
                        "it is used as %s", directory, installation.release, label,
                        installation.release)
        erlangs.setdefault(installation.release, installation)
    for directory in kerl_installations():
        installation = probe_erlang(directory, "kerl")
        if installation is not None:
            erlangs.setdefault(installation.release, installation)
    root = system_erlang_root()
    if root is not None:
        installation = probe_erlang(root, "system")
        if installation is not None:
            erlangs.setdefault(installation.release, installation)
    default = config.builds.default_erlang or (max(erlangs, key=release_order) if erlangs else None)
    enot = find_enot(config)
    git = shutil.which("git")
    bwrap = shutil.which("bwrap")
    slirp4netns = shutil.which("slirp4netns")
    return Toolchain(
        erlangs=erlangs,
        enot=enot,
        enot_version=enot_version(enot) if enot else None,
        git=Path(git) if git else None,
        bwrap=Path(bwrap) if bwrap else None,
        default_erlang=default,
        slirp4netns=Path(slirp4netns) if slirp4netns else None,
    )
