"""The second compiler (enot_builder/fallback.py) on its own: real rebar, rebar3, escript
and Python, each step in the real sandbox (bubblewrap, the build user, no network).

The server's wiring of it (a build that enot cannot make) is tested in test_builds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from enot_builder import config as config_module
from enot_builder import toolchains
from enot_builder.build import rebar_project
from enot_builder.build.fallback import RebarBuild, StepOutcome
from enot_builder.build.rebar_project import Compiler, DeclaredDependency
from enot_builder.layout import remove_tree
from enot_builder.process import run
from enot_builder.sandbox import Sandbox

from . import projects
from .conftest import require, world_readable_tempdir

NIF_C = """\
#include <erl_nif.h>
#include <ei.h>
static ERL_NIF_TERM add(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
    int a, b;
    if (!enif_get_int(env, argv[0], &a) || !enif_get_int(env, argv[1], &b))
        return enif_make_badarg(env);
    ei_init();  /* from libei, which port_env links: proves the flags were used */
    return enif_make_int(env, a + b);
}
static ErlNifFunc funcs[] = {{"add", 2, add}};
ERL_NIF_INIT(%(name)s, funcs, NULL, NULL, NULL, NULL)
"""


def nif_project(name: str) -> dict[str, str]:
    """A NIF described by rebar 2's port_specs/port_env, with a C file the spec leaves out
    (enot compiles every C file it finds: this one does not compile) and {vsn, git}."""
    return {
        "rebar.config": (
            "{erl_opts, [debug_info]}.\n{deps, []}.\n"
            f'{{port_specs, [{{"priv/{name}.so", ["c_src/{name}.c"]}}]}}.\n'
            '{port_env, [{"CFLAGS", "$CFLAGS -O2"}, {"LDFLAGS", "$LDFLAGS -lei"}]}.\n'),
        f"src/{name}.app.src": (f'{{application, {name}, [{{description, "a NIF"}}, {{vsn, git}}, '
                                "{registered, []}, {applications, [kernel, stdlib]}, {env, []}]}.\n"),
        f"src/{name}.erl": (
            f"-module({name}).\n-export([add/2]).\n-on_load(init/0).\n"
            f'init() -> erlang:load_nif(filename:join(code:priv_dir({name}), "{name}"), 0).\n'
            "add(_, _) -> erlang:nif_error(not_loaded).\n"),
        f"c_src/{name}.c": NIF_C % {"name": name},
        "c_src/not_listed.c": "this is not C, and port_specs does not list it\n",
    }


@pytest.fixture
def work() -> Iterator[tuple[Path, Sandbox]]:
    root = world_readable_tempdir("enot-builder-test-fallback-")
    config = config_module.Config()
    config.storage.data_dir = str(root / "data")
    config_module.validate(config)
    found = toolchains.discover(config)
    require(found.bwrap is not None and shutil.which("rebar3") is not None
            and shutil.which("rebar") is not None,
            "bubblewrap, rebar3 and rebar (Debian packages bubblewrap rebar3 rebar)")
    sandbox = Sandbox(config.builds, found, protected=(config.data_dir,))
    work_dir = root / "data" / "work" / "b1"
    work_dir.parent.mkdir(parents=True)
    sandbox.prepare_work_dir(work_dir)
    (work_dir / "home").mkdir()
    yield work_dir, sandbox
    remove_tree(root)


def clone(work_dir: Path, url: str, tag: str, sandbox: Sandbox) -> str:
    """The build's shallow clone of the tag, as the builder makes it, owned by the build user."""
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--no-tags", "--branch", tag,
                    url, str(work_dir / "src" / "p")], check=True, capture_output=True)
    user = sandbox.build_user()
    if user is not None:
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(work_dir)], check=True)
    return "src/p"


def erl_eval(erl_libs: Path, expression: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["erl", "-noshell", "-eval", f"{expression}, halt()."],
                          capture_output=True, text=True, timeout=60, cwd=erl_libs,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(erl_libs),
                               "ERL_LIBS": str(erl_libs), "ERL_CRASH_DUMP": "/dev/null"})


def sandboxed_step(work_dir: Path, sandbox: Sandbox, src_rel: str, log: list[str]) -> Any:
    root = sandbox.root_for(work_dir)
    erlang = next(iter(sandbox.toolchain.erlangs.values()))

    async def step(argv: list[str], env: dict[str, str], label: str) -> StepOutcome:
        result = await run(sandbox.command(argv, work_dir=work_dir, cwd=f"{root}/{src_rel}",
                                           env={"HOME": f"{root}/home", **env}, erlang=erlang,
                                           network=False), None, 120, capture=64 * 1024)
        output = result.output.decode(errors="replace")
        log.append(f"{label}: {argv} -> {result.returncode}\n{output}")
        return StepOutcome(result.returncode == 0, output)
    return step


async def test_a_port_specs_nif_is_built_by_rebar_2_into_an_enot_package(
        work: tuple[Path, Sandbox], make_repo: Any) -> None:
    work_dir, sandbox = work
    url = make_repo("nif_demo", nif_project("nif_demo"), tag="v0.4.0")
    src_rel = clone(work_dir, url, "v0.4.0", sandbox)
    log: list[str] = []
    build = RebarBuild(sandboxed_step(work_dir, sandbox, src_rel, log), work_dir,
                       sandbox.root_for(work_dir), src_rel)
    build.prepare({})

    project = await build.describe()
    assert project.port_specs and project.compilers == [Compiler.REBAR], log
    fixed = await build.fix_versions("v0.4.0", "0" * 40, ["src/nif_demo.app.src"])
    assert 'vsn git -> "0.4.0"' in fixed, log
    await build.lay_out()
    compiler = await build.compile(project)
    assert compiler is Compiler.REBAR, log
    config = {"url": "https://github.com/tester/nif_demo", "tag": "v0.4.0",
              "fullname": "tester/nif_demo", "deps": []}
    await build.assemble(compiler, config)

    package = work_dir / src_rel / "nif_demo.ep"
    with tarfile.open(package) as tar:
        names = tar.getnames()
        enot_config = json.load(tar.extractfile("enot_config.json"))  # type: ignore[arg-type]
        app = tar.extractfile("ebin/nif_demo.app").read().decode()  # type: ignore[union-attr]
        makefile = tar.extractfile("c_src/Makefile").read().decode()  # type: ignore[union-attr]
        assert {m.mtime for m in tar.getmembers()} == {0}
    assert names[:3] == ["ebin", "ebin/nif_demo.app", "ebin/nif_demo.beam"], names
    for name in ("priv/nif_demo.so", "src/nif_demo.erl", "c_src/nif_demo.c", "c_src/Makefile"):
        assert name in names, names
    assert '{vsn,"0.4.0"}' in app, app
    assert enot_config["name"] == "nif_demo" and enot_config["app_vsn"] == "0.4.0", enot_config
    assert enot_config["url"] == "https://github.com/tester/nif_demo", enot_config
    assert "priv/nif_demo.so" in makefile

    # The library loads, from the package's own layout.
    lib = world_readable_tempdir("enot-builder-test-nif-lib-")
    try:
        (lib / "nif_demo").mkdir()
        with tarfile.open(package) as tar:
            tar.extractall(lib / "nif_demo")  # our own package: plain members
        out = erl_eval(lib, 'io:format("~p", [nif_demo:add(2, 3)])')
        assert out.stdout == "5", out
    finally:
        remove_tree(lib)


async def test_rebar3_builds_offline_with_the_dependencies_on_erl_libs(
        work: tuple[Path, Sandbox], make_repo: Any, repos_dir: Path) -> None:
    work_dir, sandbox = work
    # A dependency as this server keeps it: an enot package, with a header.
    dep_files = projects.enot_project("helper")
    dep_files["include/helper.hrl"] = "-define(ANSWER, 42).\n"
    dep_package = repos_dir / "helper.ep"
    with tarfile.open(dep_package, "w") as tar:
        for name, content in {**dep_files, "ebin/helper.app":
                              '{application, helper, [{vsn, "1.0.0"}, {modules, []}]}.\n'}.items():
            path = repos_dir / "helper-files" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            tar.add(path, name)
    files = {
        "rebar.config": ('{erl_opts, [debug_info]}.\n'
                         '{deps, [{helper, "1.0.0"}, {other, {git, "https://github.com/x/other.git",'
                         ' {branch, "main"}}}, {third, {git, "https://github.com/x/third", '
                         '{tag, "2.0"}}}]}.\n{plugins, [rebar3_hex]}.\n'),
        "rebar.config.script": 'lists:keystore(erl_opts, 1, CONFIG, {erl_opts, [{d, from_script}]}).\n',
        # A lock of a registry package: rebar3 would fetch it (offline: fail).
        "rebar.lock": '{"1.2.0", [{<<"cf">>, {pkg, <<"cf">>, <<"0.3.1">>}, 0}]}.\n',
        "src/uses.app.src": ('{application, uses, [{description, "x"}, {vsn, git}, {registered, []},'
                             ' {applications, [kernel, stdlib, helper]}, {env, []}]}.\n'),
        "src/uses.erl": ('-module(uses).\n-export([answer/0]).\n-include_lib("helper/include/helper.hrl").\n'
                         "-ifdef(from_script).\nanswer() -> ?ANSWER.\n-endif.\n"),
    }
    url = make_repo("uses", files, tag="3.1.0")
    src_rel = clone(work_dir, url, "3.1.0", sandbox)
    log: list[str] = []
    build = RebarBuild(sandboxed_step(work_dir, sandbox, src_rel, log), work_dir,
                       sandbox.root_for(work_dir), src_rel)
    build.prepare({"helper": dep_package})

    project = await build.describe()
    assert not project.port_specs and project.plugins == ["rebar3_hex"], log
    assert project.dependencies == [
        DeclaredDependency("helper", "hex", value="1.0.0"),
        DeclaredDependency("other", "git", "https://github.com/x/other.git", "branch", "main"),
        DeclaredDependency("third", "git", "https://github.com/x/third", "tag", "2.0")]
    await build.fix_versions("3.1.0", "0" * 40, ["src/uses.app.src"])
    await build.lay_out()
    compiler = await build.compile(project)
    assert compiler is Compiler.REBAR3, "\n".join(log)
    deps = rebar_project.enot_dependencies(project, {"other": ("https://github.com/x/other", "abc123")})
    await build.assemble(compiler, {"deps": deps}, locks={"x/other": "main-abc123"})
    with tarfile.open(work_dir / src_rel / "uses.ep") as tar:
        names = tar.getnames()
        enot_config = json.load(tar.extractfile("enot_config.json"))  # type: ignore[arg-type]
        locks = json.load(tar.extractfile("enot_locks.json"))  # type: ignore[arg-type]
    assert "ebin/uses.beam" in names and "src/uses.erl" in names, names
    assert enot_config["deps"] == [
        {"name": "helper", "tag": "1.0.0"},
        {"name": "other", "url": "https://github.com/x/other", "tag": "abc123"},
        {"name": "third", "url": "https://github.com/x/third", "tag": "2.0"}], enot_config
    assert enot_config["app_vsn"] == "3.1.0"
    assert locks == {"x/other": "main-abc123"}


def test_tag_versions_as_rebar3_makes_them() -> None:
    assert rebar_project.tag_version("v1.2.3") == "1.2.3"
    assert rebar_project.tag_version("1.2.3") == "1.2.3"
    assert rebar_project.tag_version("proj/v2.0") == "2.0"
    assert rebar_project.tag_version("v") == "v"
    assert rebar_project.tag_version("version-1") == "ersion-1"  # rebar3's regex drops any leading v
