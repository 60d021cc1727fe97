"""The build server's own vocabulary: what a build is, and what can go wrong.

Nothing here knows HTTP or the database driver. The core (requests, the queue, the
builder) raises these exceptions; the web layer (errors.py) turns each into the
protocol's envelope and status, and the pages into their error page.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping


class BuildStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED)


class Stage(enum.StrEnum):
    """The step of a build that failed: what metrics count and pages show."""
    CLONE = "clone"
    SOURCE = "source"
    RELEASE = "release"
    DEPENDENCIES = "dependencies"
    COMPILE = "compile"
    ARTIFACT = "artifact"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Build:
    """One build as the queue and the builder see it: its row and its repository's."""
    id: str
    repository_id: int
    namespace: str
    name: str
    clone_url: str
    ref: str
    erl_version: str | None
    status: BuildStatus
    attempt: int = 0
    priority: int = 0
    parent_id: str | None = None
    package_version_id: int | None = None
    requested_by: str = "api"
    notify_email: bool = False
    bound_by: str = "request"
    author_email: str | None = None
    commit_sha: str | None = None
    artifact_path: str | None = None
    artifact_name: str | None = None
    artifact_sha256: str | None = None
    artifact_size: int | None = None
    log_path: str | None = None
    message: str = ""
    failure_stage: Stage | None = None
    worker: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    not_before: datetime | None = None

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Build:
        """From a row of the store's build queries; columns it does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in row.items() if key in known}
        values["id"] = str(values["id"])
        if values.get("parent_id") is not None:
            values["parent_id"] = str(values["parent_id"])
        values["status"] = BuildStatus(values["status"])
        if values.get("failure_stage") is not None:
            values["failure_stage"] = Stage(values["failure_stage"])
        return cls(**values)


# --- what a build tells the queue ---------------------------------------------------

class BuildFailure(Exception):
    """The build failed for a reason the author should read (it goes to log and message).

    `stage` is the step that failed (metrics count failures by it, pages show it).
    `retryable` marks failures of the infrastructure rather than of the package (a
    clone that timed out, a host that did not answer): those are tried again.
    `see_log` marks a message whose details are in the build log: the API's and the
    mail's message say so, the log's own last line does not.
    """

    def __init__(self, message: str, retryable: bool = False, see_log: bool = False,
                 stage: Stage = Stage.INTERNAL) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.see_log = see_log
        self.stage = stage


@dataclass
class Outcome:
    succeeded: bool
    message: str
    artifact_path: str | None = None
    artifact_name: str | None = None
    artifact_sha256: str | None = None
    artifact_size: int | None = None
    # Dependencies pinned to a tag, as the package's enot_config.json lists them.
    dependencies: list[tuple[str, str]] = field(default_factory=list)
    # A failure of the infrastructure, worth another attempt.
    retryable: bool = False
    # The build log has the details (the message says so; the log's last line not).
    see_log: bool = False
    # The step that failed; None for a success.
    stage: Stage | None = None


@dataclass
class BuildHooks:
    """What a build reports back to the queue while it runs (all database writes)."""
    log_opened: Callable[[str], Awaitable[None]]
    source_known: Callable[[str, str | None], Awaitable[None]]
    # Called when the request left the release to the package: gets the releases the
    # package wants, returns the one this build takes (the others are queued).
    releases_known: Callable[[list[str]], Awaitable[str]]


# --- what the core raises; errors.py maps each to a status ------------------------

class DomainError(Exception):
    """A refusal a person should read: the message is the whole explanation."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(DomainError):
    """A field of a request is wrong (400). `field` lets a form show it in place.

    `reason` is the message without the field's own name ("is not a valid git tag
    ..."), for a form whose field is labelled otherwise than the API's; by default
    the whole message.
    """

    def __init__(self, field: str | None, message: str, *, reason: str | None = None,
                 **details: Any) -> None:
        super().__init__(message, **details)
        self.field = field
        self.reason = reason if reason is not None else message


class NotFound(DomainError):
    """No such build, package or file (404)."""


class RepositoryConflict(DomainError):
    """The name is bound to another repository (409)."""


class ReleaseNotInstalled(DomainError):
    """An Erlang release asked for is not installed here (400)."""


class IntakeClosed(DomainError):
    """The server is shutting down and takes no new builds (503)."""


class Unavailable(DomainError):
    """The database (or another service the server needs) does not answer (503)."""
