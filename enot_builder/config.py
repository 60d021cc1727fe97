"""Settings: defaults, then a TOML file, then ENOT_BUILDER_<SECTION>_<KEY> variables.

Every key is documented in README.md; a test keeps that table and these dataclasses
in step.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "ENOT_BUILDER_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Base of the links in mails and pages; empty means http://host:port.
    public_url: str = ""
    max_body_size: int = 1024 * 1024
    # Seconds for a request's whole body to arrive; past it: 408, connection closed.
    body_timeout: int = 30
    # Seconds a connection may sit without a complete request (idle keep-alive, or
    # headers that never finish) before it is closed.
    idle_timeout: int = 30
    # Seconds a response may wait for a client that stopped reading before the
    # connection is dropped.
    send_timeout: int = 60
    # Open client connections at most (a few more are kept for GET /health); each is a
    # file descriptor, and builds and the database need theirs.
    max_connections: int = 512
    # Seconds running builds get to finish on SIGTERM before they are requeued.
    shutdown_grace: int = 20
    # GET /badge: "svg" draws the badge here, "shields" redirects to img.shields.io.
    badge_style: str = "svg"
    # Bearer token of the operator's endpoints (POST /retire, /unretire); empty: off.
    admin_token: str = ""
    # What this process does: "all" (HTTP and builds), "web" (HTTP, no builds) or
    # "worker" (builds, no public HTTP). `serve --role` sets it too.
    role: str = "all"
    # Downloads of local files answered with X-Accel-Redirect for nginx to send
    # (deploy/nginx.conf); only with nginx in front.
    accel_redirect: bool = False
    # Small artifacts kept in memory (bytes and headers), least recently used out.
    file_cache_mb: int = 64
    file_cache_item_kb: int = 512


@dataclass
class StorageConfig:
    # Holds artifacts/, logs/, work/, erts/ and, without a DSN, the private cluster pg/.
    data_dir: str = "data"
    # Where artifacts, logs of finished builds and ERTS tarballs live: "local" (under
    # data_dir) or "s3" (a bucket of any S3-compatible server).
    backend: str = "local"
    bucket: str = ""
    prefix: str = ""
    # Empty: AWS. Else the URL of another S3-compatible server.
    endpoint: str = ""
    region: str = "us-east-1"
    # Empty: the AWS_* environment variables (or botocore's other sources).
    access_key_id: str = ""
    secret_access_key: str = ""
    # Downloads answered with a redirect to a presigned URL (302, or 303 to a POST)
    # valid presign_seconds, instead of the bytes through this server.
    redirect: bool = False
    presign_seconds: int = 300


@dataclass
class SigningConfig:
    # The Ed25519 private key (PEM, mode 0600) that signs provenance; empty: the one
    # made on first start under data_dir/signing/.
    key_file: str = ""
    # Public keys (PEM files) of earlier signing keys, still served by GET /keys after
    # a rotation so that older statements verify.
    previous_public_keys: list[str] = field(default_factory=list)


@dataclass
class DatabaseConfig:
    # Empty: the server runs a private PostgreSQL cluster under data_dir/pg.
    dsn: str = ""
    # The unprivileged user that owns the private cluster when the server runs as root
    # (initdb refuses root).
    cluster_user: str = "enot-builder"
    pool_size: int = 10


@dataclass
class BuildsConfig:
    # 0 means one worker per core.
    workers: int = 0
    # Wall-clock seconds for one build (clone plus every enot step).
    timeout: int = 1800
    clone_timeout: int = 300
    # Erlang release used when neither the request nor enot_config.json names one;
    # empty means the newest installed release.
    default_erlang: str = ""
    # Where the Erlang/OTP installations are: release -> installation directory.
    # The system `erl` is always looked at too.
    erlang_installations: dict[str, str] = field(default_factory=dict)
    # Path to the enot executable; empty looks in .venv-enot/bin, then PATH.
    enot: str = ""
    # The sandbox: "bwrap" (bubblewrap) or "none" (only with allow_unsandboxed).
    sandbox: str = "bwrap"
    allow_unsandboxed: bool = False
    # Network for the steps that run the package's code (enot); the clone always has
    # its own. Off: dependencies come only from this server's cache.
    network: bool = False
    memory_limit_mb: int = 3072
    cpu_time: int = 1800
    max_processes: int = 256
    max_file_size_mb: int = 512
    log_limit_mb: int = 16
    # A build that failed for an infrastructure reason (clone timeout, unreachable
    # host) runs again, up to max_attempts in all, after retry_delay seconds doubled
    # with each attempt. A compile failure is final.
    max_attempts: int = 3
    retry_delay: int = 30
    # A build still running this many seconds past its timeout is failed and killed.
    watchdog_margin: int = 300
    # Seconds a worker holds a claimed build without renewing (it renews every quarter
    # of it); past it the build goes back to the queue, counting an attempt.
    lease_seconds: float = 60.0
    # Unprivileged uid/gid builds run as, inside the sandbox, when the server is root.
    build_user: str = "nobody"


@dataclass
class GitConfig:
    allowed_schemes: list[str] = field(default_factory=lambda: ["https"])
    allowed_hosts: list[str] = field(
        default_factory=lambda: ["github.com", "gitlab.com", "bitbucket.org"]
    )
    # Clone URL prefix -> replacement, like git's insteadOf: mirrors and proxies. The
    # allow-list is checked on the URL as requested, the clone uses the rewritten one.
    rewrites: dict[str, str] = field(default_factory=dict)


@dataclass
class GithubConfig:
    # The key each repository's webhook secret is derived from (github.repository_secret);
    # it verifies no delivery itself. GIT_SECRET in the environment is accepted too.
    # Empty refuses every webhook.
    webhook_secret: str = ""


@dataclass
class MailConfig:
    # SMTP server for build reports; empty host sends no mail.
    host: str = ""
    port: int = 25
    # "none", "starttls" or "tls".
    security: str = "none"
    # EMAIL_USER and EMAIL_PASSWORD in the environment are accepted too.
    user: str = ""
    password: str = ""
    sender: str = "enot-builder@localhost"
    timeout: int = 30
    # A failed delivery is tried again this many times, waiting retry_delay seconds,
    # doubled after each try.
    retries: int = 5
    retry_delay: float = 2.0


@dataclass
class DependenciesConfig:
    # The package registry's API, asked by the server (never by a build) where a rebar
    # dependency is named the registry way ({name, "vsn"}); answers are cached in the
    # database.
    hex_api: str = "https://hex.pm/api"


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    builds: BuildsConfig = field(default_factory=BuildsConfig)
    git: GitConfig = field(default_factory=GitConfig)
    github: GithubConfig = field(default_factory=GithubConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    dependencies: DependenciesConfig = field(default_factory=DependenciesConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).resolve()

    @property
    def public_url(self) -> str:
        url = self.server.public_url or f"http://{self.server.host}:{self.server.port}"
        return url.rstrip("/")

    @property
    def worker_count(self) -> int:
        return self.builds.workers or os.cpu_count() or 1


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, overlaid by the TOML file at `path`, overlaid by the environment."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    config = Config()
    for section_name, values in raw.items():
        section = _section(config, section_name)
        if not isinstance(values, dict):
            raise ConfigError(f"[{section_name}] must be a table")
        for key, value in values.items():
            _set(section, section_name, key, value, from_env=False)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section_name in SECTIONS:
            if rest.startswith(section_name + "_"):
                key = rest[len(section_name) + 1:]
                _set(getattr(config, section_name), section_name, key, value, from_env=True)
                break
        else:
            raise ConfigError(f"{name}: no such configuration section")
    # The names the original service used for its secrets.
    if not config.github.webhook_secret and env.get("GIT_SECRET"):
        config.github.webhook_secret = env["GIT_SECRET"]
    if not config.mail.user and env.get("EMAIL_USER"):
        config.mail.user = env["EMAIL_USER"]
    if not config.mail.password and env.get("EMAIL_PASSWORD"):
        config.mail.password = env["EMAIL_PASSWORD"]
    validate(config)
    return config


def _section(config: Config, name: str) -> Any:
    if name not in SECTIONS:
        raise ConfigError(f"unknown config section [{name}] (known: {', '.join(SECTIONS)})")
    return getattr(config, name)


def _set(section: Any, section_name: str, key: str, value: Any, from_env: bool) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    where = f"{ENV_PREFIX}{section_name.upper()}_{key.upper()}" if from_env else f"[{section_name}] {key}"
    if key not in fields:
        raise ConfigError(f"{where}: unknown key")
    current = getattr(section, key)
    try:
        setattr(section, key, _coerce(current, value, from_env))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _coerce(current: Any, value: Any, from_env: bool) -> Any:
    """Convert `value` to the type of the default; environment values are strings."""
    if isinstance(current, bool):
        if from_env:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected a boolean, got {value!r}")
        if not isinstance(value, bool):
            raise TypeError(f"expected a boolean, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if isinstance(current, int):
        if isinstance(value, (bool, float)):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    if isinstance(current, list):
        if from_env:
            return [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return value
    if isinstance(current, dict):
        if from_env:
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected key=value pairs separated by commas")
            return {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise TypeError(f"expected a table of strings, got {value!r}")
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"unsupported setting type {type(current).__name__}")


def validate(config: Config) -> None:
    if not 0 < config.server.port < 65536:
        raise ConfigError("[server] port must be between 1 and 65535")
    for key in ("max_body_size", "body_timeout", "idle_timeout", "send_timeout",
                "max_connections"):
        if getattr(config.server, key) <= 0:
            raise ConfigError(f"[server] {key} must be positive")
    if config.server.badge_style not in ("svg", "shields"):
        raise ConfigError('[server] badge_style must be "svg" or "shields"')
    if config.server.role not in ("all", "web", "worker"):
        raise ConfigError('[server] role must be "all", "web" or "worker"')
    if config.server.role != "all" and not config.database.dsn:
        raise ConfigError(f'[server] role = "{config.server.role}" shares the queue with other '
                          "processes: it needs [database] dsn (the private cluster is one "
                          "process's own)")
    if config.server.file_cache_mb < 0 or config.server.file_cache_item_kb < 0:
        raise ConfigError("[server] file_cache_mb and file_cache_item_kb must not be negative")
    if config.storage.backend not in ("local", "s3"):
        raise ConfigError('[storage] backend must be "local" or "s3"')
    if config.storage.backend == "s3" and not config.storage.bucket:
        raise ConfigError('[storage] backend = "s3" needs a bucket')
    if config.storage.presign_seconds <= 0:
        raise ConfigError("[storage] presign_seconds must be positive")
    if config.builds.lease_seconds < 1:
        raise ConfigError("[builds] lease_seconds must be at least 1")
    if config.builds.workers < 0:
        raise ConfigError("[builds] workers must be 0 (one per core) or more")
    if config.builds.sandbox not in ("bwrap", "none"):
        raise ConfigError('[builds] sandbox must be "bwrap" or "none"')
    if config.builds.sandbox == "none" and not config.builds.allow_unsandboxed:
        raise ConfigError('[builds] sandbox = "none" needs allow_unsandboxed = true')
    for key in ("timeout", "clone_timeout", "memory_limit_mb", "cpu_time", "max_processes",
                "max_file_size_mb", "log_limit_mb", "max_attempts", "watchdog_margin"):
        if getattr(config.builds, key) <= 0:
            raise ConfigError(f"[builds] {key} must be positive")
    if config.mail.security not in ("none", "starttls", "tls"):
        raise ConfigError('[mail] security must be "none", "starttls" or "tls"')
    if config.mail.retries < 0 or config.mail.retry_delay < 0:
        raise ConfigError("[mail] retries and retry_delay must not be negative")
    if not config.dependencies.hex_api.startswith(("https://", "http://")):
        raise ConfigError("[dependencies] hex_api must be an http(s) URL")
    for scheme in config.git.allowed_schemes:
        if scheme not in ("https", "http", "git", "ssh", "file"):
            raise ConfigError(f"[git] allowed_schemes: {scheme!r} is not a git transport we allow")
