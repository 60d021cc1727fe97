"""Checks on everything a client sends, before anything is written.

Each function returns the clean value or raises InvalidInput(field, message), a
message that names the field (the error middleware answers it with a 400). Names,
refs and URLs end up in paths, git command lines and SQL, so they are held to strict
shapes here rather than escaped later.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import unquote, urlsplit

from .config import GitConfig
from .domain import InvalidInput

if TYPE_CHECKING:
    from aiohttp import web

# Whole-value shapes: always applied with fullmatch (a `$` would let "a\n" through).
NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
ERL_VERSION = re.compile(r"(?:\d{1,3}|R\d{1,2}[AB]\d{0,2}(?:-\d{1,2})?)")
REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
MAX_VERSIONS = 32
MAX_REF_LENGTH = 255
MAX_URL_LENGTH = 2048
TOO_MANY = f"may hold at most {MAX_VERSIONS} entries"


def bad(message: str, field: str | None = None) -> InvalidInput:
    """A refusal of the handlers' own checks (a parameter missing, a header too long)."""
    return InvalidInput(field, message)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (json_object)."""
    return json_object(await request.read())


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (the web layer already enforced the size limit)."""
    if not raw:
        raise InvalidInput(None, "The request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except ValueError as e:  # bad UTF-8, bad JSON, or numbers too long to convert
        raise InvalidInput(None, f"The request body is not valid JSON: {e}") from None
    except RecursionError:
        # A megabyte of '[' is valid JSON nesting deeper than Python's parser goes.
        raise InvalidInput(None, "The request body nests too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput(None, "The request body must be a JSON object")
    return body


def full_name(value: Any, field: str = "full_name") -> tuple[str, str]:
    if not isinstance(value, str):
        raise InvalidInput(field, f"Field {field!r} must be a string like 'namespace/name'")
    parts = value.split("/")
    if len(parts) != 2 or not all(_name_part(p) for p in parts):
        raise InvalidInput(field,
                           f"Field {field!r} must be 'namespace/name' (letters, digits, '.', '_', '-'), "
                           f"got {_shorten(value)!r}")
    return parts[0], parts[1]


def name_part(value: str, field: str) -> str:
    if not _name_part(value):
        raise InvalidInput(field, f"Parameter {field!r} must be letters, digits, '.', '_' or '-', "
                           f"got {_shorten(value)!r}")
    return value


def _name_part(part: str) -> bool:
    return bool(NAME_PART.fullmatch(part)) and part not in (".", "..") and not part.endswith(".lock")


def ref(value: Any, field: str = "ref") -> str:
    """A tag name as `git check-ref-format` would accept it, and not an option."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"Field {field!r} must be a non-empty string (a git tag)")
    problem = ref_problem(value)
    if problem:
        reason = f"is not a valid git tag ({problem}): {_shorten(value)!r}"
        raise InvalidInput(field, f"Field {field!r} {reason}", reason=reason)
    return value


def ref_problem(value: str) -> str | None:
    """Why `refs/tags/<value>` is not a tag name we build, or None when it is.

    The rules of `git check-ref-format` (a test compares the two), plus: no leading
    '-' (git would read an option), no more than MAX_REF_LENGTH characters, and not
    '@' alone.
    """
    if len(value) > MAX_REF_LENGTH:
        return f"longer than {MAX_REF_LENGTH} characters"
    if value.startswith("-"):
        return "starts with '-'"
    if REF_FORBIDDEN.search(value):
        return "contains a space, a control character or one of ~^:?*[\\"
    if ".." in value or "@{" in value or "//" in value or value == "@":
        return "contains '..', '@{' or '//', or is '@'"
    if value.endswith((".", "/")) or value.startswith("/"):
        return "starts with '/' or ends with '.' or '/'"
    parts = value.split("/")
    if any(part.endswith(".lock") for part in parts):
        return "a component ends with '.lock'"
    if any(part.startswith(".") for part in parts):
        return "a component starts with '.'"
    return None


def erl_version(value: Any, field: str = "erl_version") -> str:
    if not isinstance(value, str) or not ERL_VERSION.fullmatch(value):
        raise InvalidInput(field, f"Field {field!r} must be an Erlang/OTP release such as \"25\", "
                           f"got {_shorten(str(value))!r}")
    return value


def build_id(value: Any, field: str = "build_id") -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise InvalidInput(field, f"Field {field!r}: no build has the id {value}; build ids are UUIDs")
    if not isinstance(value, str):
        raise InvalidInput(field, f"Field {field!r} must be a build id (a UUID)")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(field,
                           f"Field {field!r} is not a build id (a UUID): {_shorten(value)!r}") from None


def boolean(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise InvalidInput(field, f"Field {field!r} must be true or false")
    return value


@dataclass(frozen=True)
class VersionRequest:
    ref: str
    erl_version: str | None


def build_versions(value: Any) -> list[VersionRequest]:
    """`versions` of a build request: a non-empty list of {"ref", "erl_version"?}."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("versions",
                           "Field 'versions' must be a non-empty list of {\"ref\", \"erl_version\"?}")
    if len(value) > MAX_VERSIONS:
        raise InvalidInput("versions", f"Field 'versions' {TOO_MANY}", reason=TOO_MANY)
    result = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInput(f"versions[{i}]",
                               f"versions[{i}] must be an object with 'ref' and optionally 'erl_version'")
        erl = item.get("erl_version")
        result.append(VersionRequest(
            ref(item.get("ref"), f"versions[{i}].ref"),
            None if erl is None else erl_version(erl, f"versions[{i}].erl_version"),
        ))
    return list(dict.fromkeys(result))  # a repeated entry is one build


def version_filters(value: Any) -> list[dict[str, str]] | None:
    """`versions` of a listing: absent, one filter object, or a list of them.

    The enot client sends a single object (`{"ref": ...}`), not a list; both work.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise InvalidInput("versions", "Field 'versions' must be a list of {\"ref\"?, \"erl_version\"?}")
    if len(value) > MAX_VERSIONS:
        raise InvalidInput("versions", f"Field 'versions' {TOO_MANY}", reason=TOO_MANY)
    filters = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInput(f"versions[{i}]", f"versions[{i}] must be an object")
        clean = {}
        if item.get("ref") is not None:
            clean["ref"] = ref(item["ref"], f"versions[{i}].ref")
        if item.get("erl_version") is not None:
            clean["erl_version"] = erl_version(item["erl_version"], f"versions[{i}].erl_version")
        filters.append(clean)
    return filters


def clone_url(value: Any, git: GitConfig, data_dir: Path) -> str:
    """A clone URL on the allow-list. Credentials are refused and never echoed.

    `data_dir` is the server's data directory: no file:// URL may name it, anything
    in it or a directory above it (the build sandbox would show it to the build).
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput("clone_url", "Field 'clone_url' must be a non-empty string")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidInput("clone_url", f"Field 'clone_url' is longer than {MAX_URL_LENGTH} characters")
    if CONTROL_OR_SPACE.search(value) or value.startswith("-"):
        raise InvalidInput("clone_url",
                           "Field 'clone_url' contains spaces, control characters or starts with '-'")
    if "::" in value.split("/", 1)[0]:
        raise InvalidInput("clone_url",
                           "Field 'clone_url': git remote helpers (such as ext::) are not allowed")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidInput("clone_url", "Field 'clone_url' is not a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in git.allowed_schemes:
        allowed = ", ".join(git.allowed_schemes)
        raise InvalidInput("clone_url", f"Field 'clone_url': scheme {scheme or '(none)'!r} is not allowed "
                           f"(allowed: {allowed})")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("clone_url", "Field 'clone_url' must not carry credentials")
    if parts.query or parts.fragment:
        raise InvalidInput("clone_url", "Field 'clone_url' must not have a query or fragment")
    if scheme == "file":
        # The builder binds the unquoted path into the sandbox: check that one.
        path = unquote(parts.path)
        if (parts.netloc or not path.startswith("/") or ".." in path.split("/")
                or CONTROL_OR_SPACE.search(path)):
            raise InvalidInput("clone_url", "Field 'clone_url': a file URL must be file:///absolute/path")
        if _shows(Path(os.path.realpath(path)), data_dir.resolve()):
            raise InvalidInput("clone_url", "Field 'clone_url': a file URL must not name the server's data "
                               "directory, a directory inside it or one above it")
        return value
    host = (parts.hostname or "").lower()
    if host not in [h.lower() for h in git.allowed_hosts]:
        raise InvalidInput("clone_url", f"Field 'clone_url': host {host or '(none)'!r} is not allowed "
                           f"(allowed: {', '.join(git.allowed_hosts)})")
    del port  # only parsed to reject a malformed one
    if _owner_and_repository(parts.path) is None:
        # Exactly two segments: a longer path (a GitLab subgroup, a fork's path that
        # ends in someone else's owner/name) names a package that is not its owner's.
        raise InvalidInput("clone_url", "Field 'clone_url' must name a repository exactly, like "
                           f"https://{host}/owner/repo (optionally .git or a trailing /), "
                           f"got path {_shorten(parts.path or '/')!r}")
    return value


def _owner_and_repository(path: str) -> tuple[str, str] | None:
    """owner, repo of a URL path that is exactly /owner/repo[.git][/], else None."""
    if path.endswith("/"):
        path = path[:-1]
    if path.endswith(".git"):
        path = path[:-4]
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not all(_name_part(p) for p in parts[1:]):
        return None
    return parts[1], parts[2]


def host_of(url: str) -> str:
    """The host a clone URL names, lowercased; '' for a file:// URL (this machine)."""
    return (urlsplit(url).hostname or "").lower()


def _shows(path: Path, data_dir: Path) -> bool:
    """Whether binding `path` into a sandbox would show it `data_dir` (or some of it)."""
    return path.is_relative_to(data_dir) or data_dir.is_relative_to(path)


def repository_of(url: str, field: str = "clone_url") -> tuple[str, str]:
    """namespace/name a hosted clone URL names: its path, exactly /owner/repo[.git]."""
    names = _owner_and_repository(urlsplit(url).path)
    if names is None:
        raise InvalidInput(field, f"Field {field!r}: {_shorten(url)} does not name a repository as "
                           "https://host/owner/repo")
    return names


def names_match(url: str, namespace: str, name: str) -> None:
    """A hosted clone URL must be the repository the full_name says.

    Otherwise the first to ask could bind somebody's package name to their own code.
    file:// URLs (operators' local testing) are exempt.
    """
    if url.startswith("file://"):
        return
    owner, repository = repository_of(url)
    if (owner.lower(), repository.lower()) != (namespace.lower(), name.lower()):
        raise InvalidInput("clone_url",
                           f"Field 'clone_url' names {owner}/{repository}, not {namespace}/{name}: "
                           "a package is built from its own repository")


def same_repository(url_a: str, url_b: str) -> bool:
    """Two clone URLs name the same repository: the same host and path.

    Scheme, port, a .git suffix, a trailing / and case do not matter (the hosts
    treat owner and repository names case-insensitively); a file:// path does.
    """
    return _identity(url_a) == _identity(url_b)


def _identity(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(".git"):
        path = path[:-4]
    if parts.scheme.lower() == "file":
        return "", path
    return (parts.hostname or "").lower(), path.lower()


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(name, f"Parameter {name!r} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise InvalidInput(name, f"Parameter {name!r} must be from {low} to {high}, got {value}")
    return value


def _shorten(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "..."
