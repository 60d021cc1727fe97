"""What a successful build states about its artifact: an in-toto Statement v1 with a
SLSA provenance v1 predicate (slsa.dev/spec/v1.0/provenance), signed as a DSSE
envelope by signing.py; and the facts the SBOM (sbom.py) is made from too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import signing

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Names the kind of build, as SLSA asks: how the parameters below are to be read (a
# URN: it names a format, not a server, and is the same on every enot-builder).
BUILD_TYPE = "urn:enot-builder:build-type:enot-package:v1"


@dataclass(frozen=True)
class Dependency:
    """A resolved dependency as it went into the build."""
    name: str
    version: str
    # Where it came from (its clone URL).
    source: str
    # The sha256 of the package the build used, when known.
    sha256: str | None = None


@dataclass(frozen=True)
class BuildFacts:
    """Everything provenance and SBOM say about one successful build."""
    build_id: str
    # The server's public URL: the builder's id.
    builder_url: str
    builder_version: str
    full_name: str
    artifact_name: str
    artifact_sha256: str
    clone_url: str
    ref: str
    commit: str
    erl_release: str
    erts_version: str
    # The tool that compiled it ("enot") and its version.
    compiler: str
    compiler_version: str
    started_at: datetime
    finished_at: datetime
    dependencies: tuple[Dependency, ...] = ()
    # How the build was confined (sandbox mode, network, limits): informative.
    sandbox: dict[str, Any] = field(default_factory=dict)
    # The commit's time, the packaged files' mtime (SOURCE_DATE_EPOCH).
    source_date_epoch: int | None = None

    @property
    def version(self) -> str:
        """The package version: its tag, less a leading "v"."""
        return self.ref[1:] if self.ref[:1] == "v" and self.ref[1:2].isdigit() else self.ref


def _time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statement(facts: BuildFacts) -> dict[str, Any]:
    """The in-toto statement of a build (unsigned)."""
    source_uri = f"git+{facts.clone_url}@refs/tags/{facts.ref}"
    resolved: list[dict[str, Any]] = [
        {"uri": source_uri, "digest": {"gitCommit": facts.commit}, "name": "source"},
        {"uri": f"erlang-otp:{facts.erl_release}", "name": "erlang-otp",
         "annotations": {"release": facts.erl_release, "erts": facts.erts_version}},
    ]
    for dep in facts.dependencies:
        entry: dict[str, Any] = {"uri": f"git+{dep.source}@refs/tags/{dep.version}",
                                 "name": dep.name,
                                 "annotations": {"version": dep.version}}
        if dep.sha256:
            entry["digest"] = {"sha256": dep.sha256}
        resolved.append(entry)
    internal: dict[str, Any] = {
        "compiler": {"name": facts.compiler, "version": facts.compiler_version},
        "erlang": {"release": facts.erl_release, "erts": facts.erts_version},
        "sandbox": facts.sandbox,
    }
    if facts.source_date_epoch is not None:
        internal["sourceDateEpoch"] = facts.source_date_epoch
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": facts.artifact_name, "digest": {"sha256": facts.artifact_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "package": facts.full_name,
                    "source": {"url": facts.clone_url, "ref": facts.ref},
                    "erlang": facts.erl_release,
                },
                "internalParameters": internal,
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {"id": facts.builder_url,
                            "version": {"enot-builder": facts.builder_version,
                                        facts.compiler: facts.compiler_version}},
                "metadata": {"invocationId": facts.build_id,
                             "startedOn": _time(facts.started_at),
                             "finishedOn": _time(facts.finished_at)},
            },
        },
    }


def sign(facts: BuildFacts, key: signing.SigningKey) -> dict[str, Any]:
    """The DSSE envelope GET /provenance/{build_id} serves."""
    return key.sign(signing.canonical_json(statement(facts)))
