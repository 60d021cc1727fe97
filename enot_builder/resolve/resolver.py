"""From declared dependencies to what the server builds: a repository and a tag or commit.

- a git dependency pinned to a tag or a commit is taken as it is;
- one pinned to a branch (or to nothing: the default branch) is resolved to the
  branch's commit at this moment, and built as that commit;
- a `revision` (erlang.mk's pin, rebar 2's string) is a tag when the repository has
  that tag, else a branch (resolved to its commit), else a commit;
- a registry dependency is matched against the registry's releases (registry.py) and
  built from the source repository the registry names, at the tag of that release
  (`v1.2.3` or `1.2.3`, whichever the repository has).

The repository's refs come from `ls_remote`, which the builder runs in the sandbox
(with the network a clone has). Dependencies of a kind not built here are left out
with a line in the build log: enot says what it misses, if it does.
"""

from __future__ import annotations

import re
from typing import Awaitable, Callable

from ..domain import BuildFailure, Stage
from . import Declared, Resolved
from .registry import Registry, RegistryError

# refs of a repository: full ref name (refs/heads/x, refs/tags/y, HEAD) -> commit.
LsRemote = Callable[[str], Awaitable[dict[str, str]]]
ABBREVIATED_COMMIT = re.compile(r"[0-9a-f]{7,40}")
FORGE_URL = re.compile(r"(?:git|https?)://(?:www\.)?(github\.com|gitlab\.com|bitbucket\.org)/"
                       r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?", re.IGNORECASE)


def _failure(message: str, retryable: bool = False) -> BuildFailure:
    return BuildFailure(message, retryable=retryable, stage=Stage.DEPENDENCIES)


def tag_commit(refs: dict[str, str], tag: str) -> str | None:
    """The commit of a tag (an annotated tag's ^{} line names the commit)."""
    return refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")


class Resolver:
    def __init__(self, ls_remote: LsRemote, registry: Registry | None,
                 log_line: Callable[[str], None]) -> None:
        self.ls_remote = ls_remote
        self.registry = registry
        self.log_line = log_line
        self._refs: dict[str, dict[str, str]] = {}

    async def refs(self, url: str) -> dict[str, str]:
        if url not in self._refs:
            self._refs[url] = await self.ls_remote(url)
        return self._refs[url]

    async def resolve(self, declared: list[Declared],
                      recorded: dict[str, Resolved] | None = None) -> list[Resolved]:
        """Each dependency built here, once (the first declaration of a name wins).

        `recorded` is what this build resolved before it waited: used as it is.
        """
        resolved: list[Resolved] = []
        seen: set[str] = set()
        for dep in declared:
            if dep.name in seen:
                continue
            seen.add(dep.name)
            if recorded and dep.name in recorded:
                found: Resolved | None = recorded[dep.name]
            else:
                found = await self.one(dep)
            if found is not None:
                self.log_line(f"dependency {dep.describe()}: {found.clone_url} {found.ref} "
                              f"({found.how})")
                resolved.append(found)
        return resolved

    async def one(self, dep: Declared) -> Resolved | None:
        if dep.source == "unsupported":
            self.log_line(f"dependency {dep.describe()}: not built here")
            return None
        if dep.source == "registry":
            return await self._registry(dep)
        assert dep.url is not None
        url = normal_url(dep.url)
        if dep.tag:
            return Resolved(dep.name, url, dep.tag, "tag")
        if dep.ref and ABBREVIATED_COMMIT.fullmatch(dep.ref) and len(dep.ref) == 40:
            return Resolved(dep.name, url, dep.ref, "commit")
        refs = await self.refs(url)
        if dep.ref:
            # An abbreviated commit: only the refs' own commits can be told from it.
            matches = {sha for sha in refs.values() if sha.startswith(dep.ref)}
            if len(matches) == 1:
                return Resolved(dep.name, url, matches.pop(), f"commit {dep.ref}")
            raise _failure(f"dependency {dep.describe()}: {dep.ref} is not a full commit "
                           "id, and no branch or tag of the repository points at it")
        if dep.revision:
            if tag_commit(refs, dep.revision) is not None:
                return Resolved(dep.name, url, dep.revision, "tag")
            branch = refs.get(f"refs/heads/{dep.revision}")
            if branch is not None:
                return Resolved(dep.name, url, branch, f"branch {dep.revision} now")
            if ABBREVIATED_COMMIT.fullmatch(dep.revision) and len(dep.revision) == 40:
                return Resolved(dep.name, url, dep.revision, "commit")
            raise _failure(f"dependency {dep.describe()}: {url} has no tag or branch "
                           f"{dep.revision!r}")
        if dep.branch:
            branch = refs.get(f"refs/heads/{dep.branch}")
            if branch is None:
                raise _failure(f"dependency {dep.describe()}: {url} has no branch "
                               f"{dep.branch!r}")
            return Resolved(dep.name, url, branch, f"branch {dep.branch} now")
        head = refs.get("HEAD")
        if head is None:
            raise _failure(f"dependency {dep.describe()}: {url} has no default branch")
        return Resolved(dep.name, url, head, "default branch now")

    async def _registry(self, dep: Declared) -> Resolved:
        assert dep.package is not None
        if self.registry is None:
            raise _failure(f"dependency {dep.describe()}: no registry is configured "
                           "(dependencies.hex_api)")
        try:
            package, version = await self.registry.resolve(dep.package, dep.requirement)
        except RegistryError as e:
            raise _failure(f"dependency {dep.describe()}: {e}", retryable=e.retryable) from None
        if package.source_url is None:
            raise _failure(f"dependency {dep.describe()}: the registry names no source "
                           f"repository for {dep.package} (its meta.links)")
        refs = await self.refs(package.source_url)
        for tag in (f"v{version}", version):
            if tag_commit(refs, tag) is not None:
                return Resolved(dep.name, package.source_url, tag,
                                f"registry {dep.package} {dep.requirement or '(any)'} -> {version}")
        raise _failure(f"dependency {dep.describe()}: release {version} of {dep.package} has "
                       f"no tag v{version} or {version} in {package.source_url}")


def normal_url(url: str) -> str:
    """A forge's repository as https://host/owner/repository: git:// (which GitHub no
    longer serves), http:// and a .git suffix all name the same repository."""
    match = FORGE_URL.fullmatch(url.strip())
    if match is None:
        return url
    return f"https://{match.group(1).lower()}/{match.group(2)}/{match.group(3)}"


def parse_ls_remote(output: str) -> dict[str, str]:
    """`git ls-remote` output: one `<commit>\\t<ref>` a line."""
    refs = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if re.fullmatch(r"[0-9a-f]{40,64}", sha) and name:
            refs[name.strip()] = sha
    return refs
