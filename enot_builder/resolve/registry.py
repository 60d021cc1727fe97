"""The package registry (hex.pm's API), asked by the server, never by a build.

A rebar dependency named the registry way (`{goldrush, "0.1.9"}`, `{idna, "~>6.1.0"}`,
`{name, "1.0.0", {pkg, other_name}}`) says nothing of where its source lives. The
registry's answer for the package (`GET {hex_api}/packages/{name}`) lists its releases
and, in `meta.links`, its source repository, whose name may differ from the package's
(`idna` lives in `benoitc/erlang-idna`). The requirement is matched against the
releases as rebar3 does (versions.py).

Answers are kept in the database (`registry_packages`): a package asked for again
within CACHE_SECONDS is answered from there, and when the registry cannot be reached
the last answer, however old, is used rather than failing the build.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import aiopg

from .. import store
from ..db import cursor
from . import versions

log = logging.getLogger(__name__)

# A registry answer younger than this is used as it is (an hour: new releases appear
# within it; a requirement no cached release meets asks again at once).
CACHE_SECONDS = 3600
# One answer's size at most: the biggest packages' answers are a few hundred KiB.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
TIMEOUT_SECONDS = 30
# meta.links keys that name the source repository, best first (compared in lower case:
# the registry has "GitHub", "Github", "github" alike).
SOURCE_LINKS = ("github", "source", "source code", "repository", "gitlab", "bitbucket", "git")
# Hosts whose repositories are https://host/owner/repository (anything after is a page).
FORGES = ("github.com", "gitlab.com", "bitbucket.org")
PACKAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")


class RegistryError(Exception):
    """The registry cannot say where a package lives; `retryable` when it did not answer."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class RegistryPackage:
    name: str
    releases: tuple[str, ...]
    source_url: str | None

    def version_for(self, requirement: str | None) -> str:
        """The release rebar3 would take for `requirement` (None: the newest)."""
        try:
            chosen = versions.highest_match(requirement, self.releases)
        except versions.RequirementError as e:
            raise RegistryError(f"dependency {self.name}: {e}") from None
        if chosen is None:
            wanted = f"release matching {requirement!r}" if requirement else "stable release"
            raise RegistryError(f"the registry has no {wanted} of {self.name} "
                                f"(releases: {', '.join(self.releases[:20]) or 'none'})")
        return chosen


def source_url(links: Any) -> str | None:
    """The package's source repository among its meta.links, as a clone URL."""
    if not isinstance(links, dict):
        return None
    lowered = {str(key).strip().lower(): value for key, value in links.items()
               if isinstance(value, str)}
    candidates = [lowered[key] for key in SOURCE_LINKS if key in lowered]
    candidates += [value for value in lowered.values() if value not in candidates]
    for url in candidates:
        clone = _clone_url(url)
        if clone is not None:
            return clone
    return None


def _clone_url(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or host.removeprefix("www.") not in FORGES:
        return None
    path = [part for part in parts.path.split("/") if part]
    if len(path) < 2:
        return None
    owner, repository = path[0], path[1].removesuffix(".git")
    return f"https://{host.removeprefix('www.')}/{owner}/{repository}"


def _summary(name: str, answer: Any) -> dict[str, Any]:
    """What we keep of an answer: release versions and links."""
    if not isinstance(answer, dict):
        raise RegistryError(f"the registry's answer for {name} is not a JSON object")
    releases = answer.get("releases")
    meta = answer.get("meta")
    versions_seen = [release["version"] for release in (releases if isinstance(releases, list) else [])
                     if isinstance(release, dict) and isinstance(release.get("version"), str)]
    links = meta.get("links") if isinstance(meta, dict) else None
    return {"releases": versions_seen,
            "links": {str(k): v for k, v in links.items() if isinstance(v, str)}
            if isinstance(links, dict) else {}}


def _package(name: str, summary: dict[str, Any]) -> RegistryPackage:
    return RegistryPackage(name, tuple(summary.get("releases", [])),
                           source_url(summary.get("links")))


class Registry:
    """hex_api's answers, through the database's cache."""

    def __init__(self, pool: aiopg.Pool, hex_api: str) -> None:
        self.pool = pool
        self.hex_api = hex_api.rstrip("/")

    async def package(self, name: str, refresh: bool = False) -> RegistryPackage:
        """The registry's package `name`: from the cache when fresh (unless `refresh`)."""
        if not PACKAGE_NAME.fullmatch(name):
            raise RegistryError(f"{name!r} is not a registry package name")
        async with cursor(self.pool) as cur:
            cached = await store.registry_answer(cur, self.hex_api, name)
        if cached is not None and not refresh and cached["age"] < CACHE_SECONDS:
            return _package(name, cached["answer"])
        try:
            summary = await self._ask(name)
        except RegistryError as e:
            if cached is not None and e.retryable:
                log.warning("registry %s: %s; using its answer of %d s ago", self.hex_api, e,
                            int(cached["age"]))
                return _package(name, cached["answer"])
            raise
        async with cursor(self.pool) as cur:
            await store.save_registry_answer(cur, self.hex_api, name, summary)
        return _package(name, summary)

    async def resolve(self, name: str, requirement: str | None) -> tuple[RegistryPackage, str]:
        """The package and the release `requirement` takes; a requirement no cached
        release meets asks the registry again (a release newer than the cache)."""
        package = await self.package(name)
        try:
            return package, package.version_for(requirement)
        except RegistryError:
            package = await self.package(name, refresh=True)
            return package, package.version_for(requirement)

    async def _ask(self, name: str) -> dict[str, Any]:
        url = f"{self.hex_api}/packages/{quote(name)}"
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(url, headers={"Accept": "application/json"},
                                allow_redirects=True) as response:
                if response.status == 404:
                    raise RegistryError(f"the registry ({self.hex_api}) has no package {name!r}")
                if response.status != 200:
                    raise RegistryError(f"the registry ({self.hex_api}) answered HTTP "
                                        f"{response.status} for {name!r}",
                                        retryable=response.status >= 500 or response.status == 429)
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RegistryError(f"the registry ({self.hex_api}) cannot be reached: "
                                f"{e or type(e).__name__}", retryable=True) from None
        if len(body) > MAX_ANSWER_BYTES:
            raise RegistryError(f"the registry's answer for {name!r} is over "
                                f"{MAX_ANSWER_BYTES} bytes")
        try:
            answer = await asyncio.to_thread(json.loads, body)
        except (ValueError, RecursionError):
            raise RegistryError(f"the registry's answer for {name!r} is not JSON") from None
        return _summary(name, answer)
