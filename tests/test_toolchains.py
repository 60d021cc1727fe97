"""Erlang installations, release selection, ERTS downloads and /health.

This machine has one Erlang/OTP (25). To test the *selection* logic between releases,
a stand-in installation labels that same OTP as release 24: its bin/erl answers the
release probes with "24" and otherwise runs the real erl. It proves which installation
a build ran with; it says nothing about building on a real OTP 24.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp.test_utils import TestClient

from enot_builder import config as config_module
from enot_builder import pgcluster, toolchains
from enot_builder.app import create_app
from enot_builder.keys import CONFIG

from . import projects
from .conftest import eventually, world_readable_tempdir

REAL_ROOT = toolchains.system_erlang_root()

STAND_IN_ERL = f"""#!/bin/sh
# Test stand-in: the machine's OTP labelled as release 24 (see the module docstring).
case "$*" in
  *"system_info(version)"*) printf '24 12.3.2'; exit 0 ;;
  *otp_release*) printf '"24"\\n'; exit 0 ;;
esac
exec {REAL_ROOT}/bin/erl "$@"
"""


@pytest.fixture
def otp24() -> Iterator[Path]:
    root = world_readable_tempdir("enot-builder-test-otp24-")
    (root / "bin").mkdir()
    erl = root / "bin" / "erl"
    erl.write_text(STAND_IN_ERL)
    erl.chmod(0o755)
    for tool in ("erlc", "escript"):
        (root / "bin" / tool).symlink_to(REAL_ROOT / "bin" / tool)
    (root / "erts-12.3.2").symlink_to(next(REAL_ROOT.glob("erts-*")))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def two_releases(make_client: Any, otp24: Path) -> TestClient:
    return await make_client(builds__erlang_installations={"24": str(otp24)})


def test_discovery_keys_installations_by_their_own_release(otp24: Path) -> None:
    config = config_module.Config()
    # Misnamed on purpose: the label is ignored, the installation says it is 24.
    config.builds.erlang_installations = {"26": str(otp24)}
    found = toolchains.discover(config)
    assert set(found.erlangs) == {"24", "25"}
    assert found.erlangs["24"].root == otp24 and found.erlangs["24"].source == "config"
    assert found.erlangs["25"].source == "system"
    assert found.erlangs["25"].erts_version.count(".") >= 1


def test_kerl_installations_are_found(otp24: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # kerl is not installable here; this stand-in prints what `kerl list installations`
    # prints, to test that we read it.
    kerl = tmp_path / "kerl"
    kerl.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'list installations' ] && echo 'otp24 {otp24}'\n")
    kerl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    found = toolchains.discover(config_module.Config())
    assert found.erlangs["24"].source == "kerl"


async def test_requested_release_selects_the_installation(two_releases: TestClient,
                                                          make_repo: Any, otp24: Path) -> None:
    url = make_repo("picky", projects.enot_project("picky", prebuild=["command -v erl"]))
    r = await two_releases.post("/buildSync", json={
        "full_name": "tester/picky", "clone_url": url,
        "versions": [{"ref": "1.0.0", "erl_version": "24"}, {"ref": "1.0.0", "erl_version": "25"}]})
    assert r.status == 200, await r.text()
    logs = {}
    for build in (await r.json())["response"]:
        logs[build["erl_version"]] = await (await two_releases.get(
            "/build_log", params={"build_id": build["build_id"]})).text()
    assert f"{otp24}/bin/erl" in logs["24"]
    assert "enot package with Erlang/OTP 24 (erts 12.3.2)" in logs["24"]
    assert f"{REAL_ROOT}/bin/erl" in logs["25"]
    r = await two_releases.post("/versions", json={"full_name": "tester/picky"})
    assert sorted(v["erl_version"] for v in (await r.json())["response"]) == ["24", "25"]


async def test_package_releases_share_one_clone(two_releases: TestClient,
                                                make_repo: Any) -> None:
    url = make_repo("multi", projects.enot_project("multi", erlang=["24", "25", "26"]))
    r = await two_releases.post("/buildSync", json={"full_name": "tester/multi",
                                                    "clone_url": url,
                                                    "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    builds = (await r.json())["response"]
    assert sorted(b["erl_version"] for b in builds) == ["24", "25"]
    first, second = builds
    first_log = await (await two_releases.get(
        "/build_log", params={"build_id": first["build_id"]})).text()
    second_log = await (await two_releases.get(
        "/build_log", params={"build_id": second["build_id"]})).text()
    assert "Erlang/OTP 26 is not installed here; not built" in first_log
    assert "git clone" in first_log
    assert f"source copied from the clone of build {first['build_id']}" in second_log
    assert "git clone" not in second_log
    # The shared clone goes once the last build of the family has ended.
    snapshot = Path(two_releases.server.app[CONFIG].storage.data_dir) / "sources" / first["build_id"]
    await eventually(lambda: not snapshot.exists(), f"{snapshot} removed")


async def test_no_installed_release_of_the_package(client: TestClient, make_repo: Any) -> None:
    url = make_repo("future", projects.enot_project("future", erlang=["26", "27"]))
    r = await client.post("/buildSync", json={"full_name": "tester/future", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422
    assert ("none of the package's Erlang releases (26, 27) is installed on this server "
            "(installed: 25)") in (await r.json())["response"]


async def test_download_erts(client: TestClient) -> None:
    r = await client.get("/download_erts/25")
    assert r.status == 200, await r.text()
    body = await r.read()
    assert r.headers["Content-Length"] == str(len(body))
    etag = r.headers["ETag"]
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = tar.getnames()
    top = {name.split("/")[0] for name in names}
    assert len(top) == 1 and top.pop().startswith("erts-")
    assert any(name.endswith("/bin/beam.smp") for name in names)
    again = await client.get("/download_erts/25", headers={"If-None-Match": etag})
    assert again.status == 304
    r = await client.get("/download_erts/17")
    assert r.status == 404
    assert (await r.text()).startswith("No such erlang")
    for bad in ("..%2F..%2Fetc", "25;ls", "x" * 100):
        r = await client.get(f"/download_erts/{bad}")
        assert r.status in (400, 404), bad
        assert (await r.text()).startswith(("No such erlang", '{"result": false')), bad


async def test_health_lists_toolchain(two_releases: TestClient, otp24: Path) -> None:
    r = await two_releases.get("/health")
    assert r.status == 200, await r.text()
    health = (await r.json())["response"]
    assert health["status"] == "ok"
    assert health["database"]["status"] == "ok"
    assert health["database"]["schema_version"] >= 2
    assert health["queue"] == {"queued": 0, "waiting": 0, "running": 0}
    assert health["tools"]["git"].startswith("git version")
    assert health["tools"]["enot"] == "2.1.8"
    assert health["tools"]["bwrap"].startswith("bubblewrap")
    releases = {e["release"]: e for e in health["erlang"]}
    assert releases["24"]["path"] == str(otp24)
    assert releases["25"]["default"] is True


async def test_health_is_503_while_the_database_is_down(
        aiohttp_client: Any, data_dir: Path, own_cluster: pgcluster.Cluster) -> None:
    """The test's own cluster, stopped and started under the server."""
    cluster = own_cluster
    config = config_module.Config()
    config.database.dsn = cluster.dsn
    config.storage.data_dir = str(data_dir)
    client = await aiohttp_client(create_app(config))
    assert (await client.get("/health")).status == 200
    cluster.stop()
    r = await client.get("/health")
    assert r.status == 503
    body = await r.json()
    assert body["result"] is False and body["response"]["database"]["status"] == "unavailable"
    r = await client.get("/last_builds")
    assert r.status == 503
    assert await r.json() == {"result": False,
                              "response": "The database is unavailable; try again shortly"}
    cluster.ensure_started()
    async def healthy() -> bool:
        return (await client.get("/health")).status == 200
    await eventually(healthy, "/health answering 200 after the database is back")
    assert (await client.get("/last_builds")).status == 200


def test_a_tun_device_the_build_user_cannot_open_is_a_start_up_problem(tmp_path):
    # A plain file stands in for /dev/net/tun: only its mode is read.
    device = tmp_path / "tun"
    device.touch()
    device.chmod(0o600)
    problem = toolchains.tun_problem(device)
    assert problem is not None and "mode 0600" in problem and "chmod 0666" in problem
    device.chmod(0o666)
    assert toolchains.tun_problem(device) is None
    assert "is missing" in toolchains.tun_problem(tmp_path / "absent")
