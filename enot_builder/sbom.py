"""GET /sbom/{build_id}: a CycloneDX bill of materials of one built package.

The package, each resolved dependency (name, version, source, sha256) and the
Erlang/OTP it was built with, and which depends on which; made with
cyclonedx-python-lib, so the JSON follows the schema (test_sbom validates it).
"""

from __future__ import annotations

import uuid
from datetime import UTC

from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6

from .provenance import BuildFacts

# A namespace for the BOM's serial number: one build has one serial, whenever served.
SERIAL_NAMESPACE = uuid.UUID("1f6f0c1e-6d1b-4b8e-9a51-3d0d8a6e1c2a")
SCHEMA = "1.6"


def _vcs(url: str) -> ExternalReference:
    return ExternalReference(type=ExternalReferenceType.VCS, url=XsUri(url))


def document(facts: BuildFacts) -> str:
    """The SBOM of a build, as CycloneDX 1.6 JSON."""
    package = Component(
        type=ComponentType.LIBRARY, bom_ref=f"package:{facts.full_name}",
        group=facts.full_name.split("/")[0], name=facts.full_name.split("/")[-1],
        version=facts.version,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=facts.artifact_sha256)],
        external_references=[_vcs(facts.clone_url)],
        properties=[Property(name="enot-builder:artifact", value=facts.artifact_name),
                    Property(name="enot-builder:ref", value=facts.ref),
                    Property(name="enot-builder:commit", value=facts.commit),
                    Property(name="enot-builder:build", value=facts.build_id)])
    erlang = Component(
        type=ComponentType.PLATFORM, bom_ref="erlang-otp", name="erlang-otp",
        version=facts.erl_release,
        properties=[Property(name="enot-builder:erts", value=facts.erts_version)])
    dependencies = []
    for dep in facts.dependencies:
        dependencies.append(Component(
            type=ComponentType.LIBRARY, bom_ref=f"dependency:{dep.name}@{dep.version}",
            name=dep.name, version=dep.version,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=dep.sha256)] if dep.sha256 else [],
            external_references=[_vcs(dep.source)],
            properties=[Property(name="enot-builder:source", value=dep.source)]))
    bom = Bom(serial_number=uuid.uuid5(SERIAL_NAMESPACE, facts.build_id))
    bom.metadata.component = package
    bom.metadata.timestamp = facts.finished_at.astimezone(UTC) \
        if facts.finished_at.tzinfo else facts.finished_at.replace(tzinfo=UTC)
    # The builder as a tool component (CycloneDX 1.5 on; the older Tool is deprecated).
    bom.metadata.tools.components.add(Component(
        type=ComponentType.APPLICATION, name="enot-builder", version=facts.builder_version,
        external_references=[ExternalReference(type=ExternalReferenceType.BUILD_SYSTEM,
                                               url=XsUri(facts.builder_url))]))
    bom.components.add(erlang)
    for component in dependencies:
        bom.components.add(component)
    bom.register_dependency(package, [erlang, *dependencies])
    for component in dependencies:
        bom.register_dependency(component, [])
    bom.register_dependency(erlang, [])
    return JsonV1Dot6(bom).output_as_string(indent=2)
