"""GET /sbom/{build_id}'s document (sbom.py): CycloneDX that validates against the
schema, with the package, its dependencies and the Erlang/OTP it was built with."""

from __future__ import annotations

import json

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from enot_builder import sbom
from enot_builder.provenance import Dependency

from .test_signing import facts


def test_sbom_validates_and_lists_what_went_in() -> None:
    built = facts("a" * 64, dependencies=(
        Dependency("dep", "0.2.0", "https://github.com/ns/dep", "d" * 64),
        Dependency("nohash", "1.1.0", "https://github.com/ns/nohash", None)))
    text = sbom.document(built)
    # The library's validator, on the CycloneDX 1.6 JSON schema (strict: no unknown keys).
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True) is None
    document = json.loads(text)
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == sbom.SCHEMA
    package = document["metadata"]["component"]
    assert (package["group"], package["name"], package["version"]) == ("ns", "demo", "1.0.0")
    assert package["hashes"] == [{"alg": "SHA-256", "content": "a" * 64}]
    components = {c["name"]: c for c in document["components"]}
    assert components["dep"]["version"] == "0.2.0"
    assert components["dep"]["hashes"] == [{"alg": "SHA-256", "content": "d" * 64}]
    assert components["dep"]["externalReferences"] == \
        [{"type": "vcs", "url": "https://github.com/ns/dep"}]
    assert "hashes" not in components["nohash"]
    assert components["erlang-otp"]["type"] == "platform"
    assert components["erlang-otp"]["version"] == "25"
    depends = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert sorted(depends["package:ns/demo"]) == \
        ["dependency:dep@0.2.0", "dependency:nohash@1.1.0", "erlang-otp"]
    # One build, one document: served twice, the same bytes.
    assert sbom.document(built) == text


def test_validator_rejects_a_broken_document() -> None:
    """The check above can fail: a document without its required keys is refused."""
    broken = json.loads(sbom.document(facts("a" * 64)))
    broken["components"][0]["type"] = "not-a-type"
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(broken))
    assert errors is not None
