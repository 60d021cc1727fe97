"""Build report e-mails: one per recipient when all builds of a request have ended.

Mail is sent by a background task through aiosmtplib. A failed delivery is retried
with a doubling delay a bounded number of times, then logged and counted; it never
fails, delays or loses a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Awaitable

import aiosmtplib
import jinja2

from . import paths
from .config import MailConfig

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("enot_builder", "templates/mail"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


@dataclass
class MailStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0


def compose(builds: list[dict[str, Any]], public_url: str,
            sender: str) -> list[EmailMessage]:
    """One message per author e-mail, summarising that author's builds."""
    by_author: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for build in builds:
        if build["author_email"]:
            by_author[build["author_email"]].append(build)
    messages = []
    for recipient, own in sorted(by_author.items()):
        for build in own:
            build["log_link"] = public_url + paths.build_log(build["id"])
            build["link"] = (public_url + paths.download(build["id"])
                             if build["status"] == "succeeded" else build["log_link"])
        failed = sum(1 for b in own if b["status"] != "succeeded")
        packages = sorted({f"{b['namespace']}/{b['name']} {b['ref']}" for b in own})
        verdict = "build failed" if failed == len(own) else \
            "some builds failed" if failed else "built"
        context = {"builds": own, "packages": packages, "failed": failed,
                   "public_url": public_url}
        message = EmailMessage()
        message["From"] = sender
        message["To"] = recipient
        message["Subject"] = f"[enot-builder] {', '.join(packages)}: {verdict}"
        message.set_content(TEMPLATES.get_template("report.txt").render(context))
        message.add_alternative(TEMPLATES.get_template("report.html").render(context),
                                subtype="html")
        messages.append(message)
    return messages


class Undelivered(Exception):
    """A report given up on after every retry."""


class Mailer:
    def __init__(self, config: MailConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.stats = MailStats()
        self._outbox: asyncio.Queue[EmailMessage] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._delivering = False

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being delivered (or retried)."""
        return self._outbox.empty() and not self._delivering

    @property
    def enabled(self) -> bool:
        return bool(self.config.host)

    def start(self) -> None:
        self._task = asyncio.create_task(self._deliver_forever(), name="mailer")

    async def stop(self, grace: float = 5.0) -> None:
        """Give queued mail a moment to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), grace)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def send(self, messages: list[EmailMessage]) -> None:
        if not self.enabled:
            return
        for message in messages:
            self._outbox.put_nowait(message)

    async def _deliver_forever(self) -> None:
        while True:
            message = await self._outbox.get()
            self._delivering = True
            try:
                await self._deliver(message)
            except Exception:  # one bad message must not stop the mailer
                log.exception("cannot mail %s", message["To"])
            finally:
                self._delivering = False
                self._outbox.task_done()

    async def _deliver(self, message: EmailMessage) -> None:
        """Send one report, retrying; a report given up on is logged and counted."""
        attempt: Awaitable[None] = self._send_with_retries(message)
        if self.metrics is not None:
            attempt = self.metrics.count_mail_failures(attempt, Undelivered)
        with contextlib.suppress(Undelivered):  # logged where it was given up
            await attempt

    async def _send_with_retries(self, message: EmailMessage) -> None:
        delay = self.config.retry_delay
        for attempt in range(self.config.retries + 1):
            try:
                await aiosmtplib.send(
                    message, hostname=self.config.host, port=self.config.port,
                    username=self.config.user or None, password=self.config.password or None,
                    use_tls=self.config.security == "tls",
                    start_tls=self.config.security == "starttls",
                    timeout=self.config.timeout)
                self.stats.sent += 1
                if self.metrics is not None:
                    self.metrics.record_mail(sent=True)
                log.info("mailed the build report to %s", message["To"])
                return
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                if attempt == self.config.retries:
                    self.stats.failed += 1
                    log.error("giving up mailing %s after %d tries: %s", message["To"],
                              attempt + 1, e)
                    raise Undelivered(str(e)) from e
                self.stats.retried += 1
                log.warning("mailing %s failed (%s); retrying in %.1f s", message["To"], e, delay)
                await asyncio.sleep(delay)
                delay *= 2
