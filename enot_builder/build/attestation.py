"""The last step of a successful build: its signed provenance and its SBOM, kept by
the storage beside the package (GET /provenance/{id}, GET /sbom/{id}).

The dependencies named are the packages the build really used: the .ep files in the
build's own enot cache (home/.cache/enot/<namespace>/<name>/<tag>/<erlang>/<name>.ep),
whether enot fetched them from this server or built them from git, hashed before the
work directory goes away. Those files are the build's (hostile) output: they are read
without following links, and bounded in number and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, provenance, sbom, signing
from ..domain import Outcome
from ..toolchains import ErlangInstallation, Toolchain
from .package_files import open_regular

if TYPE_CHECKING:
    from ..layout import Layout
    from ..storage import Storage
    from .context import BuildRun

MAX_DEPENDENCY_FILES = 500
CACHE = Path(".cache") / "enot"


async def attest(run: BuildRun, outcome: Outcome, erlang: ErlangInstallation,
                 toolchain: Toolchain, layout: Layout, storage: Storage,
                 key: signing.SigningKey, commit: str,
                 package_config: dict[str, Any] | None) -> None:
    """Write and store the build's provenance and SBOM; their keys go into `outcome`."""
    build = run.build
    assert outcome.artifact_name is not None and outcome.artifact_sha256 is not None
    dependencies = await asyncio.to_thread(
        used_dependencies, run.home / CACHE, erlang.release, package_config)
    facts = provenance.BuildFacts(
        build_id=build.id, builder_url=run.config.public_url,
        builder_version=__version__, full_name=build.full_name,
        artifact_name=outcome.artifact_name, artifact_sha256=outcome.artifact_sha256,
        clone_url=build.clone_url, ref=build.ref, commit=commit,
        erl_release=erlang.release, erts_version=erlang.erts_version,
        compiler="enot", compiler_version=toolchain.enot_version or "unknown",
        started_at=build.started_at or datetime.now(UTC), finished_at=datetime.now(UTC),
        dependencies=tuple(dependencies), sandbox=sandbox_settings(run),
        source_date_epoch=run.source_date_epoch)
    envelope = json.dumps(provenance.sign(facts, key), indent=2).encode()
    documents = ((".intoto.json", envelope), (".cdx.json", sbom.document(facts).encode()))
    keys = []
    for suffix, data in documents:
        name = outcome.artifact_name + suffix
        staged = layout.staging(build.id, name)
        await asyncio.to_thread(_write, staged, data)
        stored = layout.artifact_key(build.id, name)
        try:
            await storage.put(stored, staged)
        finally:
            with contextlib.suppress(OSError):  # consumed by put, unless it failed
                staged.unlink()
        keys.append(stored)
    outcome.provenance_key, outcome.sbom_key = keys
    outcome.signing_key_id = key.key_id
    run.log.line(f"provenance signed with key {key.key_id}")


def sandbox_settings(run: BuildRun) -> dict[str, Any]:
    builds = run.config.builds
    return {"mode": run.sandbox.mode, "network": builds.network,
            "timeout": builds.timeout, "memory_limit_mb": builds.memory_limit_mb,
            "cpu_time": builds.cpu_time, "max_processes": builds.max_processes}


def used_dependencies(cache: Path, erl_release: str,
                      package_config: dict[str, Any] | None) -> list[provenance.Dependency]:
    """The packages in the build's enot cache for its Erlang release, with their sha256."""
    sources: dict[str, str] = {}
    deps = (package_config or {}).get("deps")
    for dep in deps if isinstance(deps, list) else []:
        if isinstance(dep, dict) and isinstance(dep.get("url"), str):
            tail = dep["url"].rstrip("/").removesuffix(".git").rsplit("/", 2)[-2:]
            sources["/".join(tail)] = dep["url"]
    found: list[provenance.Dependency] = []
    # <namespace>/<name>/<tag>/<erlang>/<name>.ep, walked without following links.
    for namespace in _dirs(cache):
        for name in _dirs(namespace):
            for tag in _dirs(name):
                package = tag / erl_release / f"{name.name}.ep"
                digest = _sha256_regular(package)
                if digest is None:
                    continue
                full_name = f"{namespace.name}/{name.name}"
                found.append(provenance.Dependency(full_name, tag.name,
                                                   sources.get(full_name, full_name), digest))
                if len(found) >= MAX_DEPENDENCY_FILES:
                    return sorted(found, key=lambda d: (d.name, d.version))
    return sorted(found, key=lambda d: (d.name, d.version))


def _dirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _sha256_regular(path: Path) -> str | None:
    f = open_regular(path)
    if f is None:
        return None
    with f:
        digest = hashlib.sha256()
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
        return digest.hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
