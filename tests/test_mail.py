"""Build report e-mails, delivered to a real SMTP server running in the test (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller

from enot_builder.keys import MAILER

from . import projects
from .conftest import free_port, wait_for_status


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


async def wait_for_mail(inbox: Inbox, count: int, timeout: float = 30) -> None:
    for _ in range(int(timeout * 10)):
        if len(inbox.messages) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} mails, got {len(inbox.messages)}")


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return text, html


async def test_one_report_per_request_with_both_parts(make_client: Any, make_repo: Any,
                                                      smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port,
                               mail__sender="builder@example.org")
    url = make_repo("mailme", projects.enot_project("mailme"), tag="1.0.0", extra_tags=("1.1.0",))
    r = await client.post("/buildSync", json={"full_name": "tester/mailme", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}, {"ref": "1.1.0"}]})
    assert r.status == 200, await r.text()
    ids = [b["build_id"] for b in (await r.json())["response"]]
    await wait_for_mail(inbox, 1)
    await asyncio.sleep(0.5)
    assert len(inbox.messages) == 1  # both builds, one mail
    recipients, message = inbox.messages[0]
    assert recipients == [projects.AUTHOR_EMAIL]
    assert message["From"] == "builder@example.org"
    assert message["Subject"] == "[enot-builder] tester/mailme 1.0.0, tester/mailme 1.1.0: built"
    text, html = parts(message)
    public = f"http://127.0.0.1:{client.server.port}"
    for build_id in ids:
        assert f"{public}/download/{build_id}" in text
        assert f'href="{public}/download/{build_id}"' in html
    assert "enot fetch tester/mailme 1.1.0" in text


async def test_failed_build_report_links_the_log(make_client: Any, make_repo: Any,
                                                 smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port)
    url = make_repo("fails", projects.broken_project("fails"))
    r = await client.post("/buildSync", json={"full_name": "tester/fails", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422
    build_id = (await r.json())["builds"][0]["build_id"]
    await wait_for_mail(inbox, 1)
    _, message = inbox.messages[0]
    assert message["Subject"] == "[enot-builder] tester/fails 1.0.0: build failed"
    text, html = parts(message)
    assert f"/build_log?build_id={build_id}" in text
    assert "enot package failed" in html


async def test_no_mail_when_not_asked(make_client: Any, make_repo: Any,
                                      smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port)
    url = make_repo("quiet", projects.enot_project("quiet"))
    r = await client.post("/buildSync", json={"full_name": "tester/quiet", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}],
                                              "notify_email": False})
    assert r.status == 200
    await asyncio.sleep(1.0)
    assert inbox.messages == []


async def test_smtp_down_never_affects_builds(make_client: Any, make_repo: Any) -> None:
    client = await make_client(mail__host="127.0.0.1", mail__port=free_port(),
                               mail__retries=2, mail__retry_delay=0.1)
    url = make_repo("unmailed", projects.enot_project("unmailed"))
    r = await client.post("/buildSync", json={"full_name": "tester/unmailed", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    build_id = (await r.json())["response"][0]["build_id"]
    assert (await wait_for_status(client, build_id, ("succeeded",)))["status"] == "succeeded"
    mailer = client.server.app[MAILER]
    for _ in range(50):
        if mailer.stats.failed:
            break
        await asyncio.sleep(0.1)
    assert (mailer.stats.failed, mailer.stats.retried, mailer.stats.sent) == (1, 2, 0)
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200


async def test_a_request_that_joins_a_running_build_gets_its_report(
        make_client: Any, make_repo: Any, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port,
                               mail__sender="builder@example.org")
    url = make_repo("joined", projects.enot_project("joined", prebuild=["sleep 2"]))
    request = {"full_name": "tester/joined", "clone_url": url, "versions": [{"ref": "1.0.0"}]}
    first = (await (await client.post("/buildAsync", json=request)).json())["response"][0]
    await wait_for_status(client, first["build_id"], ("running",))
    second = (await (await client.post("/buildAsync", json=request)).json())["response"][0]
    assert (second["build_id"], second["coalesced"]) == (first["build_id"], True)
    await wait_for_mail(inbox, 2)  # one report per request, the joined one's too
    assert [m["Subject"] for _, m in inbox.messages] == [
        "[enot-builder] tester/joined 1.0.0: built"] * 2
