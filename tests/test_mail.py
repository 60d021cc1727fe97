"""Build report e-mails, delivered to a real SMTP server running in the test (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from enot_builder import config as config_module
from enot_builder import mail
from enot_builder.config import MailConfig
from enot_builder.keys import MAILER
from enot_builder.mail import Mailer

from . import projects
from .conftest import GATE, eventually, free_port, open_gate, settled, wait_for_status


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
    await settled(client)
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


async def test_no_mail_when_not_asked(make_client: Any, make_repo: Any, db_conn: Any,
                                      smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port)
    url = make_repo("quiet", projects.enot_project("quiet"))
    r = await client.post("/buildSync", json={"full_name": "tester/quiet", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}],
                                              "notify_email": False})
    assert r.status == 200
    # The build was followed up (no report owed: the request is never marked
    # reported) and the mailer has nothing queued or in flight: no mail will come.
    await settled(client)
    assert inbox.messages == []
    with db_conn.cursor() as cur:
        cur.execute("SELECT notify_email, reported_at FROM build_requests")
        assert cur.fetchall() == [(False, None)]


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
    await settled(client)
    assert (mailer.stats.failed, mailer.stats.retried, mailer.stats.sent) == (1, 2, 0)
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200


async def test_one_mail_per_author(make_client: Any, make_repo: Any,
                                   smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port)
    url = make_repo("shared", projects.enot_project("shared"), tag="1.0.0")
    projects.add_commit(url, {"README": "second release\n"}, "2.0.0", "other@example.org")
    r = await client.post("/buildSync", json={"full_name": "tester/shared", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}, {"ref": "2.0.0"}]})
    assert r.status == 200, await r.text()
    ids = {b["ref"]: b["build_id"] for b in (await r.json())["response"]}
    await settled(client)
    by_recipient = {tuple(rcpt): message for rcpt, message in inbox.messages}
    assert sorted(by_recipient) == [(projects.AUTHOR_EMAIL,), ("other@example.org",)]
    # Each author hears of the build of their own commit, and of nothing else.
    first, _ = parts(by_recipient[(projects.AUTHOR_EMAIL,)])
    second, _ = parts(by_recipient[("other@example.org",)])
    assert ids["1.0.0"] in first and ids["2.0.0"] not in first
    assert ids["2.0.0"] in second and ids["1.0.0"] not in second
    assert by_recipient[("other@example.org",)]["Subject"] == \
        "[enot-builder] tester/shared 2.0.0: built"


async def test_no_mail_for_dependency_builds(make_client: Any, make_repo: Any, db_conn: Any,
                                             repos_dir: Path,
                                             smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    make_repo("tester/mailleaf", projects.enot_project("mailleaf"),
              author_email="leaf-author@example.org")
    make_repo("tester/mailtop", projects.enot_project(
        "mailtop", deps=[{"name": "mailleaf", "url": "https://github.com/tester/mailleaf",
                          "tag": "1.0.0"}], body="hi() -> mailleaf:hi()."))
    client = await make_client(mail__host="127.0.0.1", mail__port=port,
                               git__rewrites={"https://github.com/": f"file://{repos_dir}/"})
    r = await client.post("/buildSync", json={"full_name": "tester/mailtop",
                                              "clone_url": "https://github.com/tester/mailtop",
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    await settled(client)
    with db_conn.cursor() as cur:
        cur.execute("SELECT r.name, b.status, b.author_email FROM builds b"
                    " JOIN repositories r ON r.id = b.repository_id ORDER BY r.name")
        assert cur.fetchall() == [("mailleaf", "succeeded", "leaf-author@example.org"),
                                  ("mailtop", "succeeded", projects.AUTHOR_EMAIL)]
    assert [rcpt for rcpt, _ in inbox.messages] == [[projects.AUTHOR_EMAIL]]
    assert "mailleaf" not in inbox.messages[0][1]["Subject"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl for this module."""
    where = tmp_path_factory.mktemp("smtp-tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Credentials:
    """aiosmtpd authenticator accepting one user and password."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.seen: list[tuple[str, bytes]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        self.seen.append((mechanism, auth_data.login))
        ok = (auth_data.login, auth_data.password) == (self.user, self.password)
        return AuthResult(success=ok)


def secure_smtp(security: str, certificate: tuple[Path, Path],
                credentials: Credentials) -> tuple[Inbox, int, Controller]:
    """aiosmtpd speaking implicit TLS or STARTTLS, and requiring a login."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    inbox, port = Inbox(), free_port()
    options: dict[str, Any] = {"authenticator": credentials, "auth_required": True,
                               "auth_require_tls": True}
    if security == "tls":
        # The whole connection is TLS; aiosmtpd does not count implicit TLS as TLS
        # for its AUTH rule, so that rule is for the STARTTLS case only.
        options.update(ssl_context=context, auth_require_tls=False)
    else:
        options.update(tls_context=context, require_starttls=True)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    return inbox, port, controller


def a_report(sender: str = "builder@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"] = sender, projects.AUTHOR_EMAIL
    message["Subject"] = "[enot-builder] tester/x 1.0.0: built"
    message.set_content("built")
    return message


@pytest.mark.parametrize("security", ["starttls", "tls"])
# aiosmtpd's warning about AUTH without its TLS rule: the implicit-TLS case above.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_secure_smtp_with_login_from_the_environment(
        security: str, certificate: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The client trusts our self-signed certificate the way it would trust any CA:
    # through OpenSSL's default verify paths (SSL_CERT_FILE).
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    credentials = Credentials("mailer", "s3cret")
    inbox, port, controller = secure_smtp(security, certificate, credentials)
    controller.start()
    try:
        conf = tmp_path / "config.toml"
        conf.write_text(f'[mail]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "{security}"\n'
                        "retries = 0\ntimeout = 5\n")
        config = config_module.load(conf, env={"EMAIL_USER": "mailer",
                                               "EMAIL_PASSWORD": "s3cret"})
        assert (config.mail.user, config.mail.password) == ("mailer", "s3cret")
        mailer = Mailer(config.mail)
        mailer.start()
        mailer.send([a_report()])
        await eventually(lambda: mailer.idle, "the mailer delivering", 30)
        await mailer.stop()
        assert (mailer.stats.sent, mailer.stats.failed) == (1, 0)
        assert [rcpt for rcpt, _ in inbox.messages] == [[projects.AUTHOR_EMAIL]]
        assert [login for _, login in credentials.seen] == [b"mailer"]

        # The control: a wrong password is refused, and nothing is delivered.
        config.mail.password = "wrong"
        mailer = Mailer(config.mail)
        mailer.start()
        mailer.send([a_report()])
        await eventually(lambda: mailer.idle, "the mailer giving up", 60)
        await mailer.stop()
        assert (mailer.stats.sent, mailer.stats.failed) == (0, 1)
        assert len(inbox.messages) == 1
    finally:
        controller.stop()


async def test_retry_delay_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on the port: every try fails at once. The mailer's waits between
    # tries are recorded instead of slept (mail.asyncio is the asyncio module: patched
    # only while this test awaits the mailer alone).
    config = MailConfig(host="127.0.0.1", port=free_port(), retries=4, retry_delay=0.5)
    mailer = Mailer(config)
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float, *args: Any) -> Any:
        waits.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(mail.asyncio, "sleep", recorded)
    await asyncio.wait_for(mailer._deliver(a_report()), 60)
    monkeypatch.undo()
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert (mailer.stats.retried, mailer.stats.failed, mailer.stats.sent) == (4, 1, 0)


async def test_a_request_that_joins_a_running_build_gets_its_report(
        make_client: Any, make_repo: Any, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    client = await make_client(mail__host="127.0.0.1", mail__port=port,
                               mail__sender="builder@example.org")
    url = make_repo("joined", projects.enot_project("joined", prebuild=[GATE]))
    request = {"full_name": "tester/joined", "clone_url": url, "versions": [{"ref": "1.0.0"}]}
    first = (await (await client.post("/buildAsync", json=request)).json())["response"][0]
    await wait_for_status(client, first["build_id"], ("running",))
    second = (await (await client.post("/buildAsync", json=request)).json())["response"][0]
    assert (second["build_id"], second["coalesced"]) == (first["build_id"], True)
    await open_gate(client, first["build_id"])
    await wait_for_status(client, first["build_id"], ("succeeded", "failed"))
    await wait_for_mail(inbox, 2)  # one report per request, the joined one's too
    assert [m["Subject"] for _, m in inbox.messages] == [
        "[enot-builder] tester/joined 1.0.0: built"] * 2


async def test_a_report_given_up_on_counts_as_a_failed_mail() -> None:
    # Nothing listens on the port: every try is refused, and the last one gives up.
    from enot_builder.metrics import Metrics

    counted = Metrics()
    mailer = Mailer(MailConfig(host="127.0.0.1", port=free_port(), retries=0), counted)
    await asyncio.wait_for(mailer._deliver(a_report()), 60)
    assert counted.registry.get_sample_value("enot_builder_mails_failed_total") == 1
    assert counted.registry.get_sample_value("enot_builder_mails_sent_total") == 0
    assert mailer.stats.failed == 1
