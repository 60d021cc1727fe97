"""GET /metrics: Prometheus text from the app's own registry, moved by real builds."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from enot_builder import metrics
from enot_builder.app import create_app

from . import projects
from .conftest import eventually, make_config, one_running_one_queued, open_gate, wait_for_status


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    r = await client.get("/metrics")
    text = await r.text()
    assert r.status == 200, text
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value; a sample that was never exported fails the test (a missing
    series is not a zero)."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        exported = sorted(k for k in samples if k[0] == name)
        raise AssertionError(f"no sample {name}{dict(labels)} in /metrics; "
                             f"{name} has {exported}")
    return samples[key]


async def test_metrics_exposed_from_a_fresh_app(client: TestClient) -> None:
    r = await client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    expected = {
        "enot_builder_builds": "counter",
        "enot_builder_build_duration_seconds": "histogram",
        "enot_builder_clone_failures": "counter",
        "enot_builder_build_failures": "counter",
        "enot_builder_clone_duration_seconds": "histogram",
        "enot_builder_queue_depth": "gauge",
        "enot_builder_running_builds": "gauge",
        "enot_builder_artifact_downloads": "counter",
        "enot_builder_http_request_duration_seconds": "histogram",
        "enot_builder_mails_sent": "counter",
        "enot_builder_mails_failed": "counter",
    }
    assert {name: families[name].type for name in expected} == expected
    # The app's own registry: none of prometheus_client's default process collectors.
    assert "process_cpu_seconds" not in families and "python_info" not in families
    samples = await scrape(client)
    assert value(samples, "enot_builder_queue_depth", status="queued") == 0
    # No build yet: the labelled counter has no series at all (not a series at 0).
    assert [k for k in samples if k[0] == "enot_builder_builds_total"] == []
    assert value(samples, "enot_builder_mails_sent_total") == 0
    # The first scrape was timed, by route and status.
    assert value(samples, "enot_builder_http_request_duration_seconds_count",
                 method="GET", route="/metrics", status="200") == 1


async def test_openmetrics_on_request(client: TestClient) -> None:
    r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await r.text()).endswith("# EOF\n")


async def test_two_apps_keep_separate_counts(aiohttp_client: Any, pg_dsn: str, data_dir: Any,
                                             clean_db: None) -> None:
    one = await aiohttp_client(create_app(make_config(pg_dsn, data_dir)))
    two = await aiohttp_client(create_app(make_config(pg_dsn, data_dir)))
    metrics.of(one.server.app).record_mail(sent=True)
    metrics.of(one.server.app).record_mail(sent=False)
    metrics.of(one.server.app).record_mail(sent=False)
    first, second = await scrape(one), await scrape(two)
    assert value(first, "enot_builder_mails_sent_total") == 1
    assert value(first, "enot_builder_mails_failed_total") == 2
    assert value(second, "enot_builder_mails_sent_total") == 0


async def test_real_builds_move_the_metrics(client: TestClient, make_repo: Any) -> None:
    url = make_repo("counted", projects.enot_project("counted"))
    r = await client.post("/buildSync", json={"full_name": "tester/counted", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}, {"ref": "6.6.6"}]})
    assert r.status == 422, await r.text()  # 6.6.6 is no tag: the clone fails
    ok = next(b for b in (await r.json())["builds"] if b["result"])
    for _ in range(2):
        r = await client.get(f"/download/{ok['build_id']}")
        assert r.status == 200
    r = await client.get("/download/not-a-uuid")
    assert r.status == 400

    samples = await scrape(client)
    assert value(samples, "enot_builder_builds_total", result="succeeded", erl_version="25") == 1
    # The failed clone never got as far as choosing a release.
    assert value(samples, "enot_builder_builds_total", result="failed",
                 erl_version="unknown") == 1
    assert value(samples, "enot_builder_clone_failures_total") == 1
    # Failures are counted by the stage that failed, every stage present from the start.
    assert value(samples, "enot_builder_build_failures_total", stage="clone") == 1
    assert value(samples, "enot_builder_build_failures_total", stage="compile") == 0
    # Both sources were cloned (timed by prometheus_async around the clone step).
    assert value(samples, "enot_builder_clone_duration_seconds_count") == 2
    assert value(samples, "enot_builder_build_duration_seconds_count", result="succeeded") == 1
    assert value(samples, "enot_builder_build_duration_seconds_sum", result="succeeded") > 0
    assert value(samples, "enot_builder_artifact_downloads_total") == 2
    assert value(samples, "enot_builder_http_request_duration_seconds_count", method="GET",
                 route="/download/{build_id}", status="200") == 2
    assert value(samples, "enot_builder_http_request_duration_seconds_count", method="GET",
                 route="/download/{build_id}", status="400") == 1
    assert value(samples, "enot_builder_http_request_duration_seconds_count", method="POST",
                 route="/buildSync", status="422") == 1
    assert value(samples, "enot_builder_queue_depth", status="running") == 0

    r = await client.get("/no/such/path/123")
    assert r.status == 404
    samples = await scrape(client)
    assert value(samples, "enot_builder_http_request_duration_seconds_count", method="GET",
                 route="unmatched", status="404") == 1
    assert not any("/no/such/path" in str(key) for key in samples)


async def test_queue_depth_and_running_builds(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__workers=1)
    slow_id, fast_id = await one_running_one_queued(client, make_repo)
    samples = await scrape(client)
    assert value(samples, "enot_builder_queue_depth", status="queued") == 1
    assert value(samples, "enot_builder_queue_depth", status="running") == 1
    assert value(samples, "enot_builder_running_builds") == 1
    await open_gate(client, slow_id)
    await wait_for_status(client, fast_id, ("succeeded", "failed"))

    async def counted() -> bool:
        # Counted as the worker lets go of the build, a moment after the row says so.
        samples = await scrape(client)
        return (value(samples, "enot_builder_queue_depth", status="queued"),
                value(samples, "enot_builder_running_builds"),
                value(samples, "enot_builder_builds_total", result="succeeded",
                      erl_version="25")) == (0, 0, 2)
    await eventually(counted, "both builds counted (queued 0, running 0, succeeded 2)")
