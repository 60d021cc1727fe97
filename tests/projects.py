"""Small real Erlang projects, made into git repositories with tags."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

AUTHOR_EMAIL = "author@example.org"

APP_SRC_TEMPLATE = (
    '{application, %(name)s, [{description, "%(name)s"}, {vsn, "{{ app.vsn }}"}, '
    "{registered, []}, {applications, {{ app.std_apps + app.apps }}}, "
    "{modules, {{ modules }}}, {env, []}]}.\n"
)


def git_repo(path: Path, files: dict[str, str], tag: str | None = "1.0.0",
             extra_tags: tuple[str, ...] = (), branch: str | None = None,
             symlinks: dict[str, str] | None = None,
             author_email: str = AUTHOR_EMAIL) -> str:
    """Create a repository at `path` with `files` (and `symlinks`: name -> target)
    committed and tagged; return its URL."""
    path.mkdir(parents=True)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    for name, link_target in (symlinks or {}).items():
        (path / name).unlink(missing_ok=True)
        (path / name).symlink_to(link_target)
    run = _git(path, author_email)
    run("init", "-q", "-b", "main")
    run("add", "-A")
    run("commit", "-q", "-m", "initial")
    for name in ((tag,) if tag else ()) + extra_tags:
        run("tag", name)
    if branch:
        run("branch", branch)
    return f"file://{path}"


def head_commit(path: Path) -> str:
    """The commit the repository at `path` has checked out."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


def add_commit(url: str, files: dict[str, str], tag: str, author_email: str) -> None:
    """Commit `files` on top of the repository at `url` as `author_email`, and tag it."""
    path = Path(url.removeprefix("file://"))
    for name, content in files.items():
        (path / name).write_text(content)
    run = _git(path, author_email)
    run("add", "-A")
    run("commit", "-q", "-m", f"release {tag}")
    run("tag", tag)


def _git(path: Path, author_email: str) -> Any:
    env = {"GIT_AUTHOR_NAME": "Author", "GIT_AUTHOR_EMAIL": author_email,
           "GIT_COMMITTER_NAME": "Author", "GIT_COMMITTER_EMAIL": author_email,
           "HOME": str(path), "PATH": "/usr/bin:/bin"}
    return lambda *args: subprocess.run(["git", *args], cwd=path, env=env, check=True,
                                        capture_output=True)


def enot_project(name: str, vsn: str = "1.0.0", erlang: list[str] | None = None,
                 deps: list[dict[str, Any]] | None = None, prebuild: list[str] | None = None,
                 body: str = "hi() -> world.") -> dict[str, str]:
    config: dict[str, Any] = {"name": name, "app_vsn": vsn, "deps": deps or []}
    if erlang is not None:
        config["erlang"] = erlang
    if prebuild:
        config["prebuild"] = [{"shell": step} for step in prebuild]
    return {
        "enot_config.json": json.dumps(config, indent=2),
        f"src/{name}.app.src": APP_SRC_TEMPLATE % {"name": name},
        f"src/{name}.erl": f"-module({name}).\n-export([hi/0]).\n{body}\n",
    }


def rebar_project(name: str, vsn: str = "0.3.0") -> dict[str, str]:
    return {
        "rebar.config": "{erl_opts, [debug_info]}.\n{deps, []}.\n",
        f"src/{name}.app.src": (f'{{application, {name}, [{{description, "{name}"}}, '
                                f'{{vsn, "{vsn}"}}, {{registered, []}}, '
                                "{applications, [kernel, stdlib]}, {env, []}]}.\n"),
        f"src/{name}.erl": f"-module({name}).\n-export([answer/0]).\nanswer() -> 42.\n",
    }


def erlang_mk_project(name: str, vsn: str = "2.0.0") -> dict[str, str]:
    """A Makefile that includes erlang.mk, without erlang.mk and without a .app.src."""
    return {
        "Makefile": (f"PROJECT = {name}\nPROJECT_DESCRIPTION = An erlang.mk project\n"
                     f"PROJECT_VERSION = {vsn}\n\ninclude erlang.mk\n"),
        f"src/{name}.erl": f"-module({name}).\n-export([ping/0]).\nping() -> pong.\n",
    }


def broken_project(name: str) -> dict[str, str]:
    files = enot_project(name)
    files[f"src/{name}.erl"] = f"-module({name}).\n-export([hi/0]).\nhi() -> this is not erlang\n"
    return files
