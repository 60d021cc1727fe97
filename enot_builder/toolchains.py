"""What builds run with: Erlang/OTP installations, the enot tool, git and bubblewrap.

Each Erlang installation is keyed by the OTP release it reports itself, never by a
folder name, so a misnamed directory cannot make us build with the wrong Erlang.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT_ROOT, Config

log = logging.getLogger(__name__)

RELEASE_PROBE = ('io:format("~s ~s", [erlang:system_info(otp_release), '
                 'erlang:system_info(version)]), halt().')


@dataclass(frozen=True)
class ErlangInstallation:
    release: str       # "25", as erlang:system_info(otp_release) prints it
    root: Path         # the directory holding bin/erl and erts-*/
    erts_version: str  # "13.1.5"
    source: str        # where we found it: "config", "system"

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
        if self.default_erlang is not None and self.default_erlang not in self.erlangs:
            found.append(f"the default Erlang release {self.default_erlang} is not installed")
        return found


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
        return bundled
    found = shutil.which("enot")
    return Path(found) if found else None


def enot_version(enot: Path) -> str | None:
    """The version from the dist-info beside a virtualenv's enot (enot --version needs a project)."""
    metas = list(enot.parent.parent.glob("lib/python*/site-packages/enot-*.dist-info"))
    if metas:
        return metas[0].name[len("enot-"):-len(".dist-info")]
    return None


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
    root = system_erlang_root()
    if root is not None:
        installation = probe_erlang(root, "system")
        if installation is not None:
            erlangs.setdefault(installation.release, installation)
    default = config.builds.default_erlang or (next(iter(erlangs)) if erlangs else None)
    enot = find_enot(config)
    git = shutil.which("git")
    bwrap = shutil.which("bwrap")
    return Toolchain(
        erlangs=erlangs,
        enot=enot,
        enot_version=enot_version(enot) if enot else None,
        git=Path(git) if git else None,
        bwrap=Path(bwrap) if bwrap else None,
        default_erlang=default,
    )
