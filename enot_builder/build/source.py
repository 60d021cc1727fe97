"""The build's source: the tag (and nothing but the tag) cloned, checked, its author known.

One clone serves every Erlang release of a tag: a build split off another copies its
clone (the layout's snapshot) instead of cloning again.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..config import Config
from ..domain import BuildFailure, Stage
from ..layout import Layout
from .context import BuildRun, check_log_full, check_memory, run_step

# What git says when the other side, not the repository, is the problem, and what we
# say instead ({host}: the host git names, else the clone URL's). All are retried.
TRANSIENT_GIT_ERRORS = (
    (("Could not resolve host", "Temporary failure in name resolution",
      "Name or service not known"), "cannot resolve host {host} (DNS)"),
    (("Connection refused",), "{host} refused the connection"),
    (("Connection timed out", "Operation timed out"), "the connection to {host} timed out"),
    (("Failed to connect", "Network is unreachable", "No route to host"),
     "cannot connect to {host}"),
    (("gnutls_handshake", "SSL_connect"), "the TLS handshake with {host} failed"),
    (("returned error: 50",), "{host} answered with a server error (HTTP 5xx)"),
    (("early EOF", "The remote end hung up unexpectedly"),
     "the connection to {host} broke off"),
    (("Too many open files",), "the build server ran out of file descriptors"),
)
GIT_HOST = re.compile(r"(?:resolve host(?:name)?|connect to)[: ]+'?([A-Za-z0-9._-]+)")


async def fetch(run: BuildRun, layout: Layout) -> None:
    """The tag into src/: copied from the clone of the build this one was split off
    from, or cloned."""
    parent = run.build.parent_id
    snapshot = layout.snapshot(parent) if parent else None
    if snapshot is not None and snapshot.is_dir():
        run.log.line(f"source copied from the clone of build {parent}")
        await asyncio.to_thread(shutil.copytree, snapshot, run.src, symlinks=True)
        await asyncio.to_thread(run.hand_over)
    else:
        await clone(run)


async def clone(run: BuildRun) -> None:
    build, config = run.build, run.config
    url = rewrite_url(build.clone_url, config.git.rewrites)
    git_config = ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
                  "-c", "protocol.http.allow=always", "-c", "protocol.git.allow=always",
                  "-c", "protocol.ssh.allow=always", "-c", "core.hooksPath=/dev/null",
                  "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main"]
    if url.startswith("file://"):
        # Reachable only when the operator allowed file:// or rewrote to a local
        # mirror (tests do both); the sandbox sees these paths read-only.
        git_config += ["-c", "protocol.file.allow=always"]
    argv = ["git", *git_config, "clone", "--quiet", "--depth", "1", "--single-branch",
            "--no-tags", "--branch", build.ref, "--", url, run.src_rel]
    root = run.root
    env = {"HOME": f"{root}/home", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_LFS_SKIP_SMUDGE": "1"}
    shown = redact(url) if url == build.clone_url else \
        f"{redact(build.clone_url)} (rewritten to {redact(url)})"
    run.log.line(f"git clone --depth 1 --branch {build.ref} {shown}")
    timeout = min(config.builds.clone_timeout, run.left())
    # git alone runs here, but its network is the sandbox's too (whatever
    # builds.network says): a redirect, or a name that resolves to 127.0.0.1, must
    # not lead it to the host's loopback. A local mirror needs no network at all.
    step = await run_step(
        run.sandbox.command(argv, work_dir=run.work_dir, cwd=root, env=env,
                            network=not url.startswith("file://"),
                            read_only=local_sources(config, url)),
        run.log, timeout, Stage.CLONE)
    check_log_full(step, run.log, Stage.CLONE)
    if step.timed_out:
        raise BuildFailure(f"git clone did not finish within {int(timeout)} s", retryable=True,
                           stage=Stage.CLONE)
    if step.returncode != 0:
        text = step.output.decode(errors="replace")
        if "Remote branch" in text and "not found" in text:
            raise BuildFailure(f"tag {build.ref!r} not found in {redact(url)}", stage=Stage.CLONE)
        check_memory(step, "git clone", config, Stage.CLONE)
        problem = clone_problem(text, url)
        raise BuildFailure(f"git clone of {redact(url)} failed: {problem}" if problem else
                           f"git clone of {redact(url)} failed (exit status {step.returncode})",
                           retryable=problem is not None, see_log=True, stage=Stage.CLONE)


async def tagged_commit(run: BuildRun) -> tuple[str, str | None]:
    """The tagged commit and its author's e-mail.

    Asking for refs/tags/<ref> by its full name also proves the ref is a tag:
    `git clone --branch` takes branch names too, and we build tags only.
    """
    build, root = run.build, run.root
    step = await run_step(
        run.sandbox.command(["git", "-c", "core.hooksPath=/dev/null", "-C", run.src_rel, "log",
                             "-1", "--format=%H%n%ae", f"refs/tags/{build.ref}^{{commit}}", "--"],
                            work_dir=run.work_dir, cwd=root,
                            env={"HOME": f"{root}/home", "GIT_CONFIG_NOSYSTEM": "1"},
                            network=False),
        None, min(60, run.left()), Stage.SOURCE)
    lines = step.output.decode(errors="replace").splitlines()
    if step.returncode != 0 or not lines or not re.fullmatch(r"[0-9a-f]{40,64}", lines[0]):
        raise BuildFailure(f"{build.ref!r} is a branch, not a tag, in "
                           f"{redact(build.clone_url)}; only tags are built", stage=Stage.SOURCE)
    email = lines[1].strip() if len(lines) > 1 else ""
    return lines[0], (email if re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", email) else None)


def local_sources(config: Config, url: str | None = None) -> tuple[Path, ...]:
    """Local repositories a build may read: file:// mirrors, and its own file:// URL."""
    urls = list(config.git.rewrites.values())
    if url is not None:
        urls.append(url)
    return tuple(Path(unquote(urlsplit(u).path)) for u in urls if u.startswith("file://"))


def write_git_config(config: Config, home: Path) -> None:
    """The build's ~/.gitconfig: the operator's URL rewrites reach enot's own clones
    of dependencies too; remote helpers stay off; local mirrors are trusted."""
    lines = ["[protocol \"ext\"]", "\tallow = never", "[core]", "\thooksPath = /dev/null",
             "[advice]", "\tdetachedHead = false", "[safe]", "\tdirectory = *"]
    for prefix, target in config.git.rewrites.items():
        lines += [f'[url "{target}"]', f"\tinsteadOf = {prefix}"]
    (home / ".gitconfig").write_text("\n".join(lines) + "\n")


def clone_problem(git_output: str, url: str) -> str | None:
    """What went wrong on the way to the host, in words, or None when it was not that."""
    for markers, problem in TRANSIENT_GIT_ERRORS:
        if any(marker in git_output for marker in markers):
            named = GIT_HOST.search(git_output)
            host = named.group(1) if named else (urlsplit(url).hostname or url)
            return problem.format(host=host)
    return None


def rewrite_url(url: str, rewrites: dict[str, str]) -> str:
    """Apply the longest matching prefix rewrite, as git's insteadOf does."""
    matches = [prefix for prefix in rewrites if url.startswith(prefix)]
    if not matches:
        return url
    prefix = max(matches, key=len)
    return rewrites[prefix] + url[len(prefix):]


def redact(url: str) -> str:
    """A URL fit for logs: without any user or password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()
