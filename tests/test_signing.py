"""The signing key, DSSE envelopes, the provenance statement and `enot-builder verify`
(issue 12): unit tests of signing.py, provenance.py and verify.py, no server."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enot_builder import cli, provenance, signing
from enot_builder.provenance import BuildFacts, Dependency


def facts(sha256: str, **overrides: object) -> BuildFacts:
    values: dict = dict(
        build_id="7d3f5a0e-0000-4000-8000-000000000001", builder_url="https://builds.example.org",
        builder_version="0.1.0", full_name="ns/demo", artifact_name="demo.ep",
        artifact_sha256=sha256, clone_url="https://github.com/ns/demo", ref="1.0.0",
        commit="c" * 40, erl_release="25", erts_version="13.2.2.5", compiler="enot",
        compiler_version="2.1.8",
        started_at=datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC),
        finished_at=datetime(2026, 11, 24, 12, 0, 9, tzinfo=UTC),
        dependencies=(Dependency("dep", "0.2.0", "https://github.com/ns/dep", "d" * 64),),
        sandbox={"mode": "bwrap", "network": False}, source_date_epoch=1700000000)
    values.update(overrides)
    return BuildFacts(**values)


def test_pae_is_the_dsse_encoding() -> None:
    # The example of the DSSE specification (protocol.md, "Signature definition").
    assert signing.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    # LEN counts bytes, not characters.
    assert signing.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    key = signing.load(tmp_path)
    path = tmp_path / signing.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = signing.load(tmp_path)
    assert again.key_id == key.key_id
    assert len(key.key_id) == 64


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    signing.load(tmp_path)
    os.chmod(tmp_path / signing.KEY_FILE, 0o644)
    with pytest.raises(signing.SigningError, match="readable by others"):
        signing.load(tmp_path)


def test_configured_key_file_and_rotation(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_file = tmp_path / "new.pem"
    key_file.write_bytes(new.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    old_public = tmp_path / "old.pub"
    old_public.write_bytes(signing.public_pem(old.public_key()))
    key = signing.load(tmp_path / "unused", str(key_file), [str(old_public)])
    assert key.key_id == signing.key_id(new.public_key())
    assert not (tmp_path / "unused").exists()
    served = key.public_keys_pem().encode()
    assert [signing.key_id(k) for k in signing.read_public_keys(served)] == \
        [signing.key_id(new.public_key()), signing.key_id(old.public_key())]
    assert f"# key id {key.key_id} (current)".encode() in served
    # A statement the old key signed still verifies with what GET /keys serves.
    envelope = signing.SigningKey(old).sign(b"{}")
    payload, by = signing.open_envelope(envelope, signing.read_public_keys(served))
    assert (payload, by) == (b"{}", signing.key_id(old.public_key()))


def test_envelope_verifies_and_any_change_breaks_it(tmp_path: Path) -> None:
    key = signing.load(tmp_path)
    envelope = provenance.sign(facts("a" * 64), key)
    keys = signing.read_public_keys(key.public_keys_pem().encode())
    payload, _ = signing.open_envelope(envelope, keys)
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": "demo.ep", "digest": {"sha256": "a" * 64}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["source"] == \
        {"url": "https://github.com/ns/demo", "ref": "1.0.0"}
    assert definition["internalParameters"]["compiler"] == {"name": "enot", "version": "2.1.8"}
    assert definition["internalParameters"]["erlang"] == {"release": "25", "erts": "13.2.2.5"}
    assert {"uri": "git+https://github.com/ns/demo@refs/tags/1.0.0",
            "digest": {"gitCommit": "c" * 40}, "name": "source"} in definition["resolvedDependencies"]
    assert any(d.get("digest") == {"sha256": "d" * 64} for d in definition["resolvedDependencies"])
    assert statement["predicate"]["runDetails"]["metadata"]["startedOn"] == "2026-11-24T12:00:00Z"
    assert statement["predicate"]["runDetails"]["builder"]["id"] == "https://builds.example.org"

    # One byte of the statement changed: the signature no longer holds.
    tampered = dict(envelope, payload=base64.b64encode(payload.replace(b"a" * 64, b"b" * 64)).decode())
    with pytest.raises(ValueError, match="no signature"):
        signing.open_envelope(tampered, keys)
    # The payload type is signed too.
    with pytest.raises(ValueError, match="no signature"):
        signing.open_envelope(dict(envelope, payloadType="application/json"), keys)
    # Another key does not verify it.
    with pytest.raises(ValueError, match="no signature"):
        signing.open_envelope(envelope, [Ed25519PrivateKey.generate().public_key()])


def run_verify(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = cli.main(["verify", *argv])
    return status, capsys.readouterr().out


def test_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "demo.ep"
    package.write_bytes(b"the package's bytes" * 100)
    from enot_builder.verify import sha256_of
    key = signing.load(tmp_path / "data")
    envelope_file = tmp_path / "provenance.json"
    envelope_file.write_text(json.dumps(provenance.sign(facts(sha256_of(package)), key)))
    keys_file = tmp_path / "keys.pem"
    keys_file.write_text(key.public_keys_pem())

    status, out = run_verify(str(package), "--provenance", str(envelope_file), "--key",
                             str(keys_file), capsys=capsys)
    assert status == 0, out
    assert f"signature: good, by key {key.key_id}" in out
    assert f"has sha256 {sha256_of(package)}, the one the statement names" in out
    assert "from https://github.com/ns/demo tag 1.0.0 commit " + "c" * 40 in out
    assert "Erlang/OTP 25 (erts 13.2.2.5) and enot 2.1.8" in out

    # One byte of the package changed: the digest check fails.
    raw = bytearray(package.read_bytes())
    raw[10] ^= 1
    changed = tmp_path / "changed.ep"
    changed.write_bytes(bytes(raw))
    status, out = run_verify(str(changed), "--provenance", str(envelope_file), "--key",
                             str(keys_file), capsys=capsys)
    assert status == 1 and "FAILED: digest" in out and "NOT VERIFIED" in out, out

    # One byte of the statement changed: the signature check fails.
    envelope = json.loads(envelope_file.read_text())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[payload.index(b"1.0.0")] = ord("2")
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(envelope))
    status, out = run_verify(str(package), "--provenance", str(forged), "--key",
                             str(keys_file), capsys=capsys)
    assert status == 1 and "FAILED: signature" in out, out

    # Another server's key does not vouch for it.
    other = tmp_path / "other.pem"
    other.write_text(signing.load(tmp_path / "other").public_keys_pem())
    status, out = run_verify(str(package), "--provenance", str(envelope_file), "--key",
                             str(other), capsys=capsys)
    assert status == 1 and "FAILED: signature" in out, out

    status, out = run_verify(str(package), capsys=capsys)
    assert status == 2 and "--provenance FILE and --key FILE" in out
