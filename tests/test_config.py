"""Configuration: defaults, TOML, environment overrides, and clear errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from enot_builder import config as config_module
from enot_builder.config import PROJECT_ROOT, ConfigError, load


def test_defaults() -> None:
    config = load(None, env={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.git.allowed_schemes == ["https"]
    assert config.git.allowed_hosts == ["github.com", "gitlab.com", "bitbucket.org"]
    assert config.database.dsn == ""
    assert config.worker_count >= 1
    # Steps that run a package's code have no network unless the operator says so.
    assert config.builds.network is False
    assert config.dependencies.hex_api == "https://hex.pm/api"


def test_toml_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\npublic_url = "https://builds.example.org/"\n'
                    '[builds]\nworkers = 3\nerlang_installations = { "26" = "/opt/otp26" }\n'
                    '[git]\nallowed_hosts = ["github.com"]\n')
    config = load(path, env={"ENOT_BUILDER_BUILDS_WORKERS": "5",
                             "ENOT_BUILDER_GIT_ALLOWED_SCHEMES": "https, file",
                             "ENOT_BUILDER_BUILDS_NETWORK": "true",
                             "ENOT_BUILDER_BUILDS_ERLANG_INSTALLATIONS": "24=/opt/otp24,25=/opt/otp25",
                             "UNRELATED": "x"})
    assert config.server.port == 9000
    assert config.public_url == "https://builds.example.org"
    assert config.builds.workers == 5
    assert config.builds.network is True
    assert config.git.allowed_schemes == ["https", "file"]
    assert config.git.allowed_hosts == ["github.com"]
    assert config.builds.erlang_installations == {"24": "/opt/otp24", "25": "/opt/otp25"}


@pytest.mark.parametrize("text,env,message", [
    ("[nope]\nx = 1\n", {}, "unknown config section [nope]"),
    ("[server]\nprot = 1\n", {}, "[server] prot: unknown key"),
    ("[server]\nport = \"eighty\"\n", {}, "[server] port"),
    ("[server]\nport = 0\n", {}, "port must be between 1 and 65535"),
    ("[builds]\nsandbox = \"none\"\n", {}, "needs allow_unsandboxed = true"),
    ("[git]\nallowed_schemes = [\"ext\"]\n", {}, "not a git transport we allow"),
    ("not toml [", {}, "is not valid TOML"),
    ("", {"ENOT_BUILDER_SERVER_PORT": "x"}, "ENOT_BUILDER_SERVER_PORT"),
    ("", {"ENOT_BUILDER_BUILDS_NETWORK": "maybe"}, "expected a boolean"),
    ("", {"ENOT_BUILDER_NOPE_X": "1"}, "no such configuration section"),
    ("[server]\nrole = \"cook\"\n", {}, 'role must be "all", "web" or "worker"'),
    ("[server]\nrole = \"worker\"\n", {}, "it needs [database] dsn"),
    ("[storage]\nbackend = \"ftp\"\n", {}, 'backend must be "local" or "s3"'),
    ("[storage]\nbackend = \"s3\"\n", {}, 'backend = "s3" needs a bucket'),
    ("[builds]\nlease_seconds = 0.5\n", {}, "lease_seconds must be at least 1"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str],
                             message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path, env=env)
    assert message in str(e.value)


def test_readme_documents_every_key() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)\.(\w+)` \|", readme, re.MULTILINE))
    keys = {(section, f.name)
            for section, section_type in config_module.SECTIONS.items()
            for f in dataclasses.fields(getattr(config_module.Config(), section))}
    assert keys == documented
