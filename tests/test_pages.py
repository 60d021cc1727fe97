"""The HTML pages, over real builds: home, search, package matrix, build, queue, the
request form without JavaScript, and friendly error pages (while the API keeps JSON)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from enot_builder.app import create_app
from enot_builder.keys import QUEUE

from . import projects
from .conftest import make_config, one_running_one_queued, open_gate, wait_for_status

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


async def page(client: TestClient, path: str, status: int = 200, **params: str) -> str:
    r = await client.get(path, params=params, headers=HTML)
    text = await r.text()
    assert r.status == status, text
    assert r.headers["Content-Type"].startswith("text/html"), r.headers
    assert "Traceback" not in text
    return text


@pytest.fixture
async def hello(client: TestClient, make_repo: Any) -> dict[str, Any]:
    """tester/hello 1.0.0 built for Erlang 25."""
    url = make_repo("hello", projects.enot_project("hello"), tag="1.0.0", extra_tags=("1.1.0",))
    r = await client.post("/buildSync", json={"full_name": "tester/hello", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    [build] = (await r.json())["response"]
    r = await client.post("/builds", json={"full_name": "tester/hello"})
    [doc] = (await r.json())["response"]
    return {"url": url, "build_id": build["build_id"], "sha256": doc["sha256"]}


async def test_home_when_nothing_is_built(client: TestClient) -> None:
    text = await page(client, "/")
    assert '<form class="search" action="/ui/packages" method="get"' in text
    assert '<strong id="queued-count">0</strong> queued' in text
    assert '<strong id="running-count">0</strong> running' in text
    assert "Nothing has been built yet" in text


async def test_home_lists_the_last_builds(client: TestClient, hello: dict[str, Any]) -> None:
    text = await page(client, "/")
    assert '<a href="/ui/packages/tester/hello">tester/hello</a>' in text
    assert f'<a class="status status-succeeded" href="/ui/builds/{hello["build_id"]}">' in text


async def test_package_page_matrix(client: TestClient, hello: dict[str, Any]) -> None:
    build_id = hello["build_id"]
    text = await page(client, "/ui/packages/tester/hello")
    assert "<th>Erlang/OTP 25</th>" in text
    assert '<th scope="row">1.0.0</th>' in text
    assert f'href="/download/{build_id}"' in text
    assert f'href="/build_log?build_id={build_id}"' in text
    assert f"<code>{hello['sha256']}</code>" in text
    assert "enot fetch tester/hello 1.0.0" in text
    assert 'src="/badge?full_name=tester/hello"' in text
    # The links on the page lead somewhere.
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200
    await page(client, "/ui/packages/tester/nothing", status=404)


async def test_build_page_of_a_finished_build(client: TestClient, hello: dict[str, Any]) -> None:
    text = await page(client, f"/ui/builds/{hello['build_id']}")
    assert '<span id="status" class="status status-succeeded">succeeded</span>' in text
    assert hello["sha256"] in text
    assert f'<a id="download" href="/download/{hello["build_id"]}">hello.ep</a>' in text
    assert "enot fetch tester/hello 1.0.0" in text
    assert "SUCCESS" in text  # the log's end, inline
    assert "data-follow" not in text and "build.js" not in text  # nothing to follow
    assert 'http-equiv="refresh"' not in text


async def test_search_lists_exact_matches_before_partial_ones(client: TestClient,
                                                              make_repo: Any) -> None:
    for name in ("erl_json", "json", "jsonx", "other"):
        url = make_repo(name, projects.enot_project(name))
        r = await client.post("/buildSync", json={"full_name": f"ns/{name}", "clone_url": url,
                                                  "versions": [{"ref": "1.0.0"}]})
        assert r.status == 200, await r.text()
    text = await page(client, "/ui/packages", q="JSON")
    found = re.findall(r'<a href="/ui/packages/ns/(\w+)">', text)
    assert found == ["json", "erl_json", "jsonx"]
    exact, partial = text.split('id="partial"')
    assert "ns/json" in exact and "ns/erl_json" in partial
    text = await page(client, "/ui/packages", q="json", version="2.0.0")
    assert "No package matches" in text
    text = await page(client, "/ui/packages", q="json", erl_version="25", namespace="ns")
    assert re.findall(r'<a href="/ui/packages/ns/(\w+)">', text) == ["json", "erl_json", "jsonx"]
    text = await page(client, "/ui/packages", q="json", namespace="elsewhere")
    assert "No package matches" in text
    text = await page(client, "/ui/packages", status=400, q="json", version="-bad")
    assert 'id="version-error"' in text and "starts with &#39;-&#39;" in text
    # The JSON /search keeps its exact-name behaviour.
    r = await client.get("/search", params={"name": "json"})
    assert [d["name"] for d in (await r.json())["response"]] == ["json"]


async def test_queue_and_queued_build_pages(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__workers=1)
    slow_id, fast_id = await one_running_one_queued(client, make_repo)

    text = await page(client, "/ui/queue")
    running, queued = text.split("<h2>Queued</h2>")
    assert f'href="/ui/builds/{slow_id}">running</a>' in running
    assert f'href="/ui/builds/{fast_id}">queued</a>' in queued
    text = await page(client, "/")
    assert '<strong id="queued-count">1</strong>' in text
    assert '<strong id="running-count">1</strong>' in text

    text = await page(client, f"/ui/builds/{fast_id}")
    assert '<span id="position">position 1 in the' in text
    assert f'data-follow="/build_log?build_id={fast_id}&amp;follow=1"' in text
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in text
    text = await page(client, f"/ui/builds/{slow_id}")
    assert "status-running" in text and "so far" in text

    text = await page(client, "/ui/packages/tester/fast")
    assert f'href="/ui/builds/{fast_id}">queued</a>' in text  # not in the matrix yet
    await open_gate(client, slow_id)
    done = await wait_for_status(client, fast_id, ("succeeded", "failed"))
    assert done["status"] == "succeeded"


async def test_request_form_without_javascript(client: TestClient, make_repo: Any,
                                               db_conn: Any) -> None:
    text = await page(client, "/ui/request", full_name="a/b")
    assert 'action="/ui/request" method="post"' in text
    assert 'value="a/b"' in text
    assert '<option value="25">25</option>' in text

    r = await client.post("/ui/request", data={"full_name": "nope", "clone_url": "ext::sh",
                                               "refs": "", "notify_email": "1"}, headers=HTML)
    text = await r.text()
    assert r.status == 400, text
    assert re.search(r'id="full_name-error">Field &#39;full_name&#39; must be', text)
    assert re.search(r'id="clone_url-error">[^<]*remote helpers', text)
    assert 'id="refs-error">Give at least one tag' in text
    assert 'value="nope"' in text  # what was typed stays
    r = await client.post("/ui/request", data={"full_name": "a/b", "refs": "1.0 a..b",
                                               "clone_url": "https://github.com/a/b"})
    text = await r.text()
    assert r.status == 400
    assert re.search(r'id="refs-error">Tag is not a valid git tag \(contains &#39;..&#39;', text)
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM repositories")
        assert cur.fetchone()[0] == 0

    url = make_repo("formed", projects.enot_project("formed"))
    r = await client.post("/ui/request", allow_redirects=False, data={
        "full_name": "tester/formed", "clone_url": url, "refs": "1.0.0", "erl_version": "25"})
    assert r.status == 303, await r.text()
    location = r.headers["Location"]
    build_id = location.removeprefix("/ui/builds/")
    assert location == f"/ui/builds/{uuid.UUID(build_id)}"
    done = await wait_for_status(client, build_id, ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    assert done["requested_by"] == "web" and done["notify_email"] is False

    # The name is now bound to that URL: another URL is refused, next to its field.
    r = await client.post("/ui/request", data={
        "full_name": "tester/formed", "clone_url": "https://github.com/tester/formed",
        "refs": "1.0.0"})
    text = await r.text()
    assert r.status == 409
    assert re.search(r'id="clone_url-error">tester/formed is bound to file://', text)


async def test_page_errors_are_pages_and_api_errors_stay_json(client: TestClient) -> None:
    unknown = str(uuid.uuid4())
    text = await page(client, f"/ui/builds/{unknown}", status=404)
    assert "<h1>Not found</h1>" in text and f"No such build: {unknown}" in text
    text = await page(client, "/ui/builds/not-a-uuid", status=400)
    assert "is not a build id" in text
    text = await page(client, "/ui/nowhere", status=404)
    assert "Not found: /ui/nowhere" in text
    await page(client, "/nowhere", status=404)  # a browser's unknown path
    r = await client.get("/nowhere")  # an API client's
    assert r.status == 404 and (await r.json())["result"] is False
    # API paths answer JSON even to a browser.
    r = await client.get("/search", headers=HTML)
    assert r.status == 400
    assert await r.json() == {"result": False, "response": "Parameter 'name' is required"}
    r = await client.get("/build_log", params={"build_id": unknown}, headers=HTML)
    assert r.status == 404 and (await r.json())["result"] is False


async def test_unexpected_page_error_is_a_friendly_500(aiohttp_client: Any, pg_dsn: str,
                                                       data_dir: Any, clean_db: None) -> None:
    app = create_app(make_config(pg_dsn, data_dir))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/ui/broken", broken)
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    text = await page(client, "/ui/broken", status=500)
    assert "Something went wrong" in text and "secret internals" not in text
    r = await client.get("/broken", headers=HTML)
    assert r.status == 500
    assert await r.json() == {"result": False,
                              "response": "Internal server error; it has been logged"}


async def test_static_files(client: TestClient) -> None:
    r = await client.get("/static/style.css")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")
    r = await client.get("/static/build.js")
    assert r.status == 200 and "follow" in await r.text()
    r = await client.get("/static/../app.py")
    assert r.status in (403, 404)


async def test_one_request_queues_in_order(make_client: Any, make_repo: Any) -> None:
    """The builds of one request (one transaction, one created_at) stand one after the
    other: the same positions in the answer, /queue and /ui/queue, taken in that order."""
    from enot_builder import store
    from enot_builder.db import cursor
    from enot_builder.keys import POOL

    client = await make_client(builds__workers=1, server__shutdown_grace=1)
    slow = make_repo("slow", projects.enot_project("slow", prebuild=["sleep 120"]))
    r = await client.post("/buildAsync", json={"full_name": "tester/slow", "clone_url": slow,
                                               "versions": [{"ref": "1.0.0"}]})
    await wait_for_status(client, (await r.json())["response"][0]["build_id"], ("running",))
    # The one worker is busy: these four stay queued.
    refs = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    url = make_repo("many", projects.enot_project("many"), tag="1.0.0",
                    extra_tags=tuple(refs[1:]))
    r = await client.post("/buildAsync", json={"full_name": "tester/many", "clone_url": url,
                                               "versions": [{"ref": ref} for ref in refs]})
    assert r.status == 202, await r.text()
    answer = (await r.json())["response"]
    assert [(b["ref"], b["queue_position"]) for b in answer] == list(zip(refs, [1, 2, 3, 4], strict=True))
    ids = [b["build_id"] for b in answer]

    r = await client.get("/queue")
    queued = [b for b in (await r.json())["response"]["builds"] if b["status"] == "queued"]
    assert [(b["build_id"], b["position"]) for b in queued] == list(zip(ids, [1, 2, 3, 4], strict=True))

    text = await page(client, "/ui/queue")
    rows = re.findall(r'<td class="position">(\d+)</td>.*?href="/ui/builds/([0-9a-f-]+)"',
                      text.split("<h2>Queued</h2>")[1], re.S)
    assert rows == [(str(n), build_id) for n, build_id in zip([1, 2, 3, 4], ids, strict=True)]
    for n, build_id in enumerate(ids, 1):
        text = await page(client, f"/ui/builds/{build_id}")
        assert f'<span id="position">position {n} in the' in text

    # The claim takes them in the same order (claimed here, by hand, as a worker would).
    claimed = []
    async with cursor(client.server.app[POOL]) as cur:
        for _ in ids:
            claimed.append((await store.claim_build(cur, "test:1/0"))["id"])
    assert [str(c) for c in claimed] == ids


async def test_favicon_is_served_and_cached(client: TestClient) -> None:
    text = await page(client, "/")
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in text
    assert '<link rel="icon" href="/favicon.ico" sizes="32x32">' in text
    r = await client.get("/favicon.ico")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert r.headers["Cache-Control"] == "public, max-age=604800"
    assert (await r.read())[:4] == b"\x00\x00\x01\x00"  # an ICO file
    r = await client.get("/static/favicon.svg")
    assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
    # Browsers' own requests for it are no 404s in the metrics.
    metrics = await (await client.get("/metrics")).text()
    assert 'route="/favicon.ico",status="200"' in metrics
    assert 'status="404"' not in metrics


async def test_failed_versions_offer_no_install_and_a_rebuild(client: TestClient,
                                                              make_repo: Any,
                                                              hello: dict[str, Any]) -> None:
    url = make_repo("broken", projects.broken_project("broken"))
    r = await client.post("/buildSync", json={"full_name": "tester/broken", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    failed_id = (await r.json())["builds"][0]["build_id"]

    text = await page(client, "/ui/packages/tester/broken")
    assert "status-failed" in text
    assert "enot fetch" not in text  # nothing of it can be fetched
    text = await page(client, "/ui/packages/tester/hello")
    assert "enot fetch tester/hello 1.0.0" in text

    # A failed build's page has a Rebuild button that works without JavaScript.
    text = await page(client, f"/ui/builds/{failed_id}")
    assert (f'<form class="rebuild" method="post" action="/ui/builds/{failed_id}/rebuild">'
            '<button type="submit" id="rebuild">Rebuild</button>') in text
    assert "enot fetch" not in text
    succeeded = await page(client, f"/ui/builds/{hello['build_id']}")
    assert 'class="rebuild"' not in succeeded
    r = await client.post(f"/ui/builds/{failed_id}/rebuild", headers=HTML, allow_redirects=False)
    assert r.status == 303, await r.text()
    again_id = r.headers["Location"].removeprefix("/ui/builds/")
    assert again_id != failed_id and str(uuid.UUID(again_id)) == again_id
    again = await wait_for_status(client, again_id, ("succeeded", "failed"))
    assert (again["ref"], again["erl_version"], again["requested_by"]) == ("1.0.0", "25",
                                                                           "rebuild")
    # Its errors are pages, as everywhere under /ui/.
    unknown = str(uuid.uuid4())
    r = await client.post(f"/ui/builds/{unknown}/rebuild", headers=HTML)
    text = await r.text()
    assert r.status == 404 and f"No such build: {unknown}" in text and "<h1>" in text
    client.server.app[QUEUE].close_intake()
    r = await client.post(f"/ui/builds/{failed_id}/rebuild", headers=HTML)
    text = await r.text()
    assert r.status == 503 and "shutting down" in text and "<h1>" in text


async def test_request_form_mail_box_follows_the_mail_server(make_client: Any) -> None:
    client = await make_client()  # no mail.host
    text = await page(client, "/ui/request")
    box = re.search(r'<input type="checkbox" id="notify_email"[^>]*>', text).group(0)
    assert "checked" not in box and "disabled" in box
    assert "no mail server is configured here" in text
    client = await make_client(mail__host="127.0.0.1")
    text = await page(client, "/ui/request")
    box = re.search(r'<input type="checkbox" id="notify_email"[^>]*>', text).group(0)
    assert " checked" in box and "disabled" not in box


async def test_request_form_answers_json_errors_by_field(client: TestClient, make_repo: Any,
                                                         db_conn: Any) -> None:
    """What request.js gets: the no-JS form's checks and messages, every field's."""
    json_accept = {"Accept": "application/json"}
    r = await client.post("/ui/request", headers=json_accept, data={
        "full_name": "nope", "clone_url": "ext::sh", "refs": "1.0 a..b", "erl_version": "x"})
    assert r.status == 400
    body = await r.json()
    assert body["result"] is False
    errors = body["errors"]
    assert set(errors) == {"full_name", "clone_url", "refs", "erl_version"}, errors
    assert errors["full_name"].startswith("Field 'full_name' must be")
    assert "remote helpers" in errors["clone_url"]
    assert errors["refs"].startswith("Tag is not a valid git tag (contains '..'")
    assert body["response"] == "; ".join(errors.values())
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM repositories")
        assert cur.fetchone()[0] == 0

    url = make_repo("jsformed", projects.enot_project("jsformed"))
    r = await client.post("/ui/request", headers=json_accept, data={
        "full_name": "tester/jsformed", "clone_url": url, "refs": "1.0.0"})
    assert r.status == 202, await r.text()
    answer = (await r.json())["response"]
    [queued] = answer["builds"]
    assert answer["location"] == f"/ui/builds/{queued['build_id']}"
    r = await client.post("/ui/request", headers=json_accept, data={
        "full_name": "tester/jsformed", "clone_url": "https://github.com/tester/jsformed",
        "refs": "1.0.0"})
    assert r.status == 409
    assert (await r.json())["errors"]["clone_url"].startswith("tester/jsformed is bound to")
    await wait_for_status(client, queued["build_id"], ("succeeded", "failed"))


async def test_page_styles(client: TestClient) -> None:
    css = await (await client.get("/static/style.css")).text()
    log_rule = re.search(r"pre\.log \{[^}]*\}", css).group(0)
    # Long log lines wrap at spaces, and only words longer than the line are cut.
    assert "white-space: pre-wrap" in log_rule and "overflow-wrap: anywhere" in log_rule
    assert "break-all" not in log_rule
    text = await page(client, "/ui/packages", q="x")
    inputs = re.findall(r'<label>\w+ <input [^>]*></label>', text)
    assert len(inputs) == 4 and not any("size=" in i for i in inputs)  # all as wide
