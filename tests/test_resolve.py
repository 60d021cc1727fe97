"""Resolving dependencies, piece by piece: version requirements as rebar3 matches them,
the registry client against a stand-in of hex.pm's API (a local aiohttp server), the
readers of each project format (the rebar one run with the real escript), and the
refs of real git repositories."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from enot_builder import db
from enot_builder.domain import BuildFailure, Stage
from enot_builder.resolve import Declared, Resolved, declared, rewrite
from enot_builder.resolve.registry import Registry, RegistryError, source_url
from enot_builder.resolve.resolver import Resolver, normal_url, parse_ls_remote
from enot_builder.resolve.versions import RequirementError, highest_match

from . import projects

ESCRIPT = Path(declared.__file__).with_name("rebar_deps.escript")
RELEASES = ["0.9.0", "1.0.0", "1.0.1", "1.1.0-rc.1", "1.1.0", "1.2.0-beta", "2.0.0",
            "2.1.3", "2.1.9", "2.2.0", "3.0.0-alpha.1", "6.1.0", "6.1.1", "6.2.0"]


@pytest.mark.parametrize(("requirement", "expected"), [
    (None, "6.2.0"),                      # the newest stable release
    ("1.0.0", "1.0.0"),                   # a bare version is that version
    ("== 1.0.1", "1.0.1"),
    ("~> 1.0", "1.1.0"),                  # >= 1.0.0 and < 2.0.0, no pre-release
    ("~> 1.0.0", "1.0.1"),                # >= 1.0.0 and < 1.1.0
    ("~>6.1.0", "6.1.1"),                 # no space, as rebar.config writes it
    ("~> 2.1.3", "2.1.9"),
    ("~> 2", "6.2.0"),                    # one part: only a lower bound
    (">= 2.0.0 and < 2.2.0", "2.1.9"),
    ("< 1.0.0 or == 2.2.0", "2.2.0"),
    ("< 1.0.0 || == 1.0.1", "1.0.1"),
    ("> 6.2.0", None),
    ("~> 1.1-rc", "1.2.0-beta"),          # a '-' in the requirement lets pre-releases in
    ("~> 3.0.0-alpha", "3.0.0-alpha.1"),
    ("<= 1.1.0", "1.1.0"),
])
def test_requirements_match_as_rebar3_does(requirement: str | None, expected: str | None) -> None:
    assert highest_match(requirement, RELEASES) == expected


def test_prerelease_order_and_bad_requirements() -> None:
    assert highest_match(">= 1.0.0-alpha", ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta.2",
                                            "1.0.0-beta.11", "1.0.0-rc.1"]) == "1.0.0-rc.1"
    assert highest_match("~> 1.0.0-beta", ["1.0.0-beta.2", "1.0.0-beta.11"]) == "1.0.0-beta.11"
    assert highest_match("1.0", ["1.0.0"]) == "1.0.0"  # 1.0 is 1.0.0
    for bad in ("", "~>", "banana", ">= 1.x", "1.0.0 and", "x" * 300):
        with pytest.raises(RequirementError):
            highest_match(bad, RELEASES)


def test_source_url_from_registry_links() -> None:
    assert source_url({"GitHub": "https://github.com/benoitc/erlang-idna"}) == \
        "https://github.com/benoitc/erlang-idna"
    assert source_url({"Github": "https://github.com/certifi/erlang-certifi/tree/master/"}) == \
        "https://github.com/certifi/erlang-certifi"
    assert source_url({"Docs": "https://hexdocs.pm/x", "Source": "http://www.github.com/a/b.git"}) \
        == "https://github.com/a/b"
    assert source_url({"Homepage": "https://example.org/x"}) is None
    assert source_url(None) is None


def test_normal_url() -> None:
    assert normal_url("git://github.com/DeadZen/goldrush.git") == \
        "https://github.com/DeadZen/goldrush"
    assert normal_url("https://github.com/ninenines/cowlib/") == "https://github.com/ninenines/cowlib"
    assert normal_url("file:///srv/mirror/x") == "file:///srv/mirror/x"


# --- the registry client, against a stand-in of the registry's API --------------------

class HexStandIn:
    """What hex.pm's `GET /api/packages/{name}` answers, for the packages it is given."""

    def __init__(self) -> None:
        self.packages: dict[str, dict[str, Any]] = {}
        self.asked: list[str] = []
        self.down = False

    def add(self, name: str, releases: list[str], links: dict[str, str]) -> None:
        self.packages[name] = {
            "name": name, "repository": "hexpm",
            "releases": [{"version": v, "url": f"https://hex.pm/api/packages/{name}/releases/{v}"}
                         for v in reversed(releases)],
            "meta": {"links": links, "licenses": ["MIT"], "description": name}}

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.asked.append(name)
        if self.down:
            return web.json_response({"status": 503}, status=503)
        if name not in self.packages:
            return web.json_response({"status": 404, "message": "Page not found"}, status=404)
        return web.json_response(self.packages[name])


@pytest.fixture
async def hex_api(aiohttp_server: Any) -> tuple[HexStandIn, str]:
    stand_in = HexStandIn()
    app = web.Application()
    app.router.add_get("/api/packages/{name}", stand_in.handle)
    server = await aiohttp_server(app)
    return stand_in, str(server.make_url("/api"))


@pytest.fixture
async def pool(pg_dsn: str, clean_db: None) -> AsyncIterator[Any]:
    pool = await db.create_pool(pg_dsn, 4)
    await db.migrate(pool)
    yield pool
    pool.close()
    await pool.wait_closed()


async def test_registry_resolves_and_caches(hex_api: tuple[HexStandIn, str], pool: Any) -> None:
    stand_in, url = hex_api
    stand_in.add("idna", ["6.0.0", "6.1.0", "6.1.1", "7.0.0-rc.0"],
                 {"GitHub": "https://github.com/benoitc/erlang-idna"})
    registry = Registry(pool, url)
    package, version = await registry.resolve("idna", "~>6.1.0")
    assert (package.source_url, version) == ("https://github.com/benoitc/erlang-idna", "6.1.1")
    # Asked once: the second answer comes from the database, even with the registry down.
    stand_in.down = True
    assert (await registry.resolve("idna", "6.0.0"))[1] == "6.0.0"
    assert stand_in.asked == ["idna"]
    # A requirement no cached release meets asks again (down: the cache answers).
    with pytest.raises(RegistryError, match="no release matching '~> 8.0' of idna"):
        await registry.resolve("idna", "~> 8.0")
    assert stand_in.asked == ["idna", "idna"]
    stand_in.down = False
    with pytest.raises(RegistryError, match="no package 'nosuch'") as missing:
        await registry.resolve("nosuch", None)
    assert not missing.value.retryable
    stand_in.add("fresh", ["1.0.0-rc.1"], {})
    with pytest.raises(RegistryError, match="no stable release of fresh"):
        await registry.resolve("fresh", None)


async def test_registry_unreachable_is_retryable(pool: Any) -> None:
    registry = Registry(pool, "http://127.0.0.1:9/api")  # discard port: refused
    with pytest.raises(RegistryError, match="cannot be reached") as failed:
        await registry.package("goldrush")
    assert failed.value.retryable


# --- what a project declares -------------------------------------------------------

def run_reader(project: Path) -> list[Declared]:
    out = project / "deps.json"
    result = subprocess.run(["escript", str(ESCRIPT), "read", str(project), str(out)],
                            cwd=project, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return declared.rebar_deps(json.loads(out.read_text()))


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def test_rebar_config_and_script(tmp_path: Path) -> None:
    project = write(tmp_path, {
        "rebar.config": """{erl_opts, [debug_info]}.
{deps, [lager, {goldrush, "0.1.9"}, {certifi, "~> 2.9", {pkg, erlang_certifi}},
        {cowlib, {git, "https://github.com/ninenines/cowlib", {tag, "2.16.0"}}},
        {ranch, {git, "https://github.com/ninenines/ranch.git", {branch, "master"}}},
        {gun, ".*", {git, "git://github.com/ninenines/gun", "1.3.3"}, [raw]},
        {meck, {hg, "https://example.org/meck", "tip"}}]}.
""",
        # rebar.config.script gets CONFIG and SCRIPT, and runs in the project directory.
        "rebar.config.script": """true = filelib:is_regular("rebar.config"),
true = lists:suffix("rebar.config.script", SCRIPT),
{deps, Deps} = lists:keyfind(deps, 1, CONFIG),
lists:keystore(deps, 1, CONFIG, {deps, Deps ++ [{jsx, {git, "https://github.com/talentdeficit/jsx",
    {ref, "0123456789abcdef0123456789abcdef01234567"}}}]}).
"""})
    assert run_reader(project) == [
        Declared("lager", "registry", package="lager"),
        Declared("goldrush", "registry", package="goldrush", requirement="0.1.9"),
        Declared("certifi", "registry", package="erlang_certifi", requirement="~> 2.9"),
        Declared("cowlib", "git", url="https://github.com/ninenines/cowlib", tag="2.16.0"),
        Declared("ranch", "git", url="https://github.com/ninenines/ranch.git", branch="master"),
        Declared("gun", "git", url="git://github.com/ninenines/gun", revision="1.3.3"),
        Declared("meck", "unsupported",
                 problem="hg dependencies are not built here (only git and the registry)"),
        Declared("jsx", "git", url="https://github.com/talentdeficit/jsx",
                 ref="0123456789abcdef0123456789abcdef01234567"),
    ]
    # Rewritten for enot: the evaluated configuration, deps as resolved, script aside.
    (project / "resolved").write_text(rewrite.terms_file([
        Resolved("goldrush", "https://github.com/DeadZen/goldrush", "0.1.9", "registry"),
        Resolved("it's", 'https://example.org/a"b', "v1", "odd names survive quoting")]))
    subprocess.run(["escript", str(ESCRIPT), "rewrite", str(project), str(project / "resolved")],
                   cwd=project, check=True, capture_output=True, timeout=60)
    assert not (project / "rebar.config.script").exists()
    consulted = subprocess.run(
        ["erl", "-noshell", "-eval", '{ok, T} = file:consult("rebar.config"), '
         'io:format("~w", [proplists:get_value(deps, T)]), halt().'],
        cwd=project, check=True, capture_output=True, text=True, timeout=60).stdout
    assert consulted == ('[{goldrush,{git,[104,116,116,112,115,58,47,47,103,105,116,104,117,98,'
                         '46,99,111,109,47,68,101,97,100,90,101,110,47,103,111,108,100,114,117,'
                         '115,104],{tag,[48,46,49,46,57]}}},{\'it\\\'s\',{git,[104,116,116,112,115,'
                         '58,47,47,101,120,97,109,112,108,101,46,111,114,103,47,97,34,98],'
                         '{tag,[118,49]}}}]')


def test_rebar_script_alone_and_errors(tmp_path: Path) -> None:
    alone = write(tmp_path / "alone", {"rebar.config.script":
                                       '[{deps, [{x, "1.0.0"}]} | CONFIG].\n'})
    assert run_reader(alone) == [Declared("x", "registry", package="x", requirement="1.0.0")]
    broken = write(tmp_path / "broken", {"rebar.config": "{deps, [}.\n"})
    result = subprocess.run(["escript", str(ESCRIPT), "read", str(broken), str(broken / "o")],
                            cwd=broken, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "rebar_deps: rebar.config:" in result.stderr


def test_erlang_mk_makefile() -> None:
    makefile = b"""PROJECT = cowboy
DEPS = cowlib ranch \\
\tgun
DEPS += jsx nope
LOCAL_DEPS = crypto
dep_cowlib = git https://github.com/ninenines/cowlib 2.16.0
dep_ranch = git https://github.com/ninenines/ranch 1.8.0
dep_ranch_commit = 2.1.0
dep_gun := hex 2.0.1
dep_jsx = https://github.com/talentdeficit/jsx v3.1.0   # the old form
# dep_nope = git https://example.org/nope 1.0
include erlang.mk
"""
    assert declared.erlang_mk_deps(makefile) == [
        Declared("cowlib", "git", url="https://github.com/ninenines/cowlib", revision="2.16.0"),
        Declared("ranch", "git", url="https://github.com/ninenines/ranch", revision="2.1.0"),
        Declared("gun", "registry", package="gun", requirement="2.0.1"),
        Declared("jsx", "git", url="https://github.com/talentdeficit/jsx", revision="v3.1.0"),
        Declared("nope", "unsupported",
                 problem="no dep_nope line (erlang.mk's package index is not used here)"),
    ]
    assert declared.erlang_mk_deps(b"DEPS = $(SOME)\n")[0].source == "unsupported"
    assert declared.erlang_mk_deps(b"include erlang.mk\n") == []


def test_makefile_conditionals_are_evaluated_as_make_would_in_the_build() -> None:
    """gun's Makefile: `ifeq ($(GUN_QUICER),1)` / `DEPS += quicer`. Nothing sets
    GUN_QUICER in the build, so quicer is not a dependency (it is not in the corpus
    either: the build failed on it)."""
    makefile = b"""PROJECT = gun
DEPS = cowlib
dep_cowlib = git https://github.com/ninenines/cowlib 2.16.0
ifeq ($(GUN_QUICER),1)
DEPS += quicer
dep_quicer = git https://github.com/emqx/quic main
endif
WITH_JSX = yes
ifdef WITH_JSX
DEPS += jsx
else
DEPS += never
endif
ifneq "$(WITH_JSX)" "yes"
DEPS += never
else ifeq ($(PROJECT),gun)
  ifndef NOT_SET
DEPS += ranch
  endif
else
DEPS += never
endif
ifeq ($(shell uname),Linux)
DEPS += never
endif
define LONG
DEPS += never
endef
dep_jsx = git https://github.com/talentdeficit/jsx v3.1.0
dep_ranch = git https://github.com/ninenines/ranch 2.1.0
include erlang.mk
"""
    assert [dep.name for dep in declared.erlang_mk_deps(makefile)] == ["cowlib", "jsx", "ranch"]


def test_makefile_conditionals_split_at_tabs_as_at_spaces() -> None:
    makefile = (b"PROJECT = gun\nifeq\t($(PROJECT),gun)\nDEPS = ranch\n"
                b"else\tifeq ($(PROJECT),x)\nDEPS += never\nendif\n")
    assert declared.makefile_assignments(makefile)["DEPS"] == "ranch"


def test_hostile_makefile_is_linear() -> None:
    import time
    started = time.monotonic()
    for hostile in (b"A" * 1_000_000, b"\\\n" * 500_000, (b" " * 1000 + b"x") * 1000,
                    b"DEPS = " + b"a " * 500_000, b"ifeq " + b'"' * 1_000_000,
                    b"ifeq (" + b"$(" * 500_000, b"ifeq \"a\" " + b"'x" * 500_000,
                    b"ifdef A\n" * 200_000 + b"DEPS = x\n" + b"else\n" * 200_000,
                    b"ifndef A\n" * 300_000 + b"DEPS = x\n" + b"endif\n" * 300_000):
        declared.erlang_mk_deps(hostile)
    assert time.monotonic() - started < 5


def test_enot_config_deps() -> None:
    config = {"deps": [
        {"name": "a", "url": "https://github.com/x/a", "tag": "1.0.0"},
        {"name": "b", "url": "https://github.com/x/b", "branch": "main"},
        {"name": "c", "url": "https://github.com/x/c",
         "branch": "0123456789abcdef0123456789abcdef01234567"},
        {"name": "jsx", "tag": "3.1.0"},
        "junk"]}
    assert declared.enot_deps(config) == [
        Declared("a", "git", url="https://github.com/x/a", tag="1.0.0"),
        Declared("b", "git", url="https://github.com/x/b", branch="main"),
        Declared("c", "git", url="https://github.com/x/c",
                 ref="0123456789abcdef0123456789abcdef01234567"),
        Declared("jsx", "registry", package="jsx", requirement="3.1.0"),
        Declared("?", "unsupported", problem="not a dependency: 'junk'"),
    ]
    assert declared.project_kind({"Makefile", "erlang.mk", "rebar.config"}) == "erlang.mk"
    assert declared.project_kind({"rebar.config.script"}) == "rebar.config"


def test_rewrites_for_enot(tmp_path: Path) -> None:
    write(tmp_path, {"enot_config.json": "{}", "Makefile": "DEPS = cowlib\ninclude erlang.mk"})
    pins = [Resolved("cowlib", "https://github.com/ninenines/cowlib", "2.16.0", "tag"),
            Resolved("b", "https://github.com/x/b", "a" * 40, "branch main now")]
    rewrite.enot_config(tmp_path, {"name": "p", "deps": [
        {"name": "b", "url": "https://github.com/x/b", "branch": "main"}, {"name": "other"}]}, pins)
    assert json.loads((tmp_path / "enot_config.json").read_text())["deps"] == [
        {"name": "b", "url": "https://github.com/x/b", "tag": "a" * 40}, {"name": "other"}]
    rewrite.makefile(tmp_path, pins)
    appended = declared.erlang_mk_deps((tmp_path / "Makefile").read_bytes())
    assert appended[0] == Declared("cowlib", "git", url="https://github.com/ninenines/cowlib",
                                   revision="2.16.0")
    with pytest.raises(BuildFailure):
        rewrite.makefile(tmp_path, [Resolved("x", "https://e.org/$(shell id)", "1", "")])
    # A link planted by the package is not followed.
    (tmp_path / "Makefile").unlink()
    (tmp_path / "Makefile").symlink_to("/etc/passwd")
    with pytest.raises(BuildFailure):
        rewrite.makefile(tmp_path, pins)


# --- resolving against real repositories ----------------------------------------------

async def test_resolver_with_real_repositories(repos_dir: Path, hex_api: tuple[HexStandIn, str],
                                               pool: Any) -> None:
    url = projects.git_repo(repos_dir / "x/lib", projects.rebar_project("lib"), tag="v1.2.0",
                            extra_tags=("1.1.0",), branch="stable")
    refs_seen: list[str] = []

    async def git_ls_remote(remote: str) -> dict[str, str]:
        process = await asyncio.create_subprocess_exec(
            "git", "ls-remote", remote, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        assert process.returncode == 0
        return parse_ls_remote(out.decode())

    async def ls_remote(remote: str) -> dict[str, str]:
        refs_seen.append(remote)
        return await git_ls_remote(remote)

    head = (await git_ls_remote(url))["HEAD"]
    stand_in, api = hex_api
    stand_in.add("lib", ["1.1.0", "1.2.0"], {"GitHub": url})  # a file:// URL: not a forge
    stand_in.add("elib", ["1.2.0"], {"github": "https://github.com/x/lib"})
    lines: list[str] = []
    resolver = Resolver(ls_remote, Registry(pool, api), lines.append)

    async def fake_forge(remote: str) -> dict[str, str]:  # github.com is the local mirror
        return await ls_remote(remote.replace("https://github.com/", f"file://{repos_dir}/"))
    resolver.ls_remote = fake_forge

    resolved = await resolver.resolve([
        Declared("a", "git", url=url, tag="v1.2.0"),
        Declared("b", "git", url=url, branch="stable"),
        Declared("c", "git", url=url),
        Declared("d", "git", url=url, revision="1.1.0"),
        Declared("e", "git", url=url, revision="main"),
        Declared("f", "registry", package="elib", requirement="~> 1.1"),
        Declared("a", "git", url=url, tag="other"),     # the first declaration wins
        Declared("g", "unsupported", problem="hg"),
    ])
    assert [(r.name, r.ref) for r in resolved] == [
        ("a", "v1.2.0"), ("b", head), ("c", head), ("d", "1.1.0"), ("e", head),
        ("f", "v1.2.0")]
    assert resolved[5].clone_url == "https://github.com/x/lib"
    assert any("g (hg): not built here" in line for line in lines)
    assert len(refs_seen) == 2  # one ls-remote per repository
    for bad in (Declared("x", "git", url=url, branch="nosuch"),
                Declared("x", "git", url=url, revision="nosuch"),
                Declared("x", "registry", package="lib")):  # no source repository
        with pytest.raises(BuildFailure) as failed:
            await resolver.one(bad)
        assert failed.value.stage == Stage.DEPENDENCIES
