"""`enot-builder verify PACKAGE.ep --provenance FILE --key FILE [--server URL]`.

Checks offline that the provenance envelope is signed by one of the keys, that it is
an in-toto statement of SLSA provenance, and that the package's sha256 is the one it
states. Exit status 0 only when all of that holds; each check is said in words.
With --server, what is not given as a file is fetched: GET /keys, and
GET /provenance/{build} (--build, or the package's sha256 naming the build).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import provenance, signing

FETCH_LIMIT = 4 * 1024 * 1024


@dataclass
class Verdict:
    ok: bool = False
    # What was checked, in order, each a sentence: what held, or the first that did not.
    lines: list[str] = field(default_factory=list)
    statement: dict[str, Any] | None = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def check(package: Path, envelope_raw: bytes, keys_pem: bytes) -> Verdict:
    verdict = Verdict()
    say = verdict.lines.append
    try:
        keys = signing.read_public_keys(keys_pem)
    except ValueError as e:
        say(f"FAILED: the key file holds no usable public key ({e})")
        return verdict
    try:
        envelope = json.loads(envelope_raw)
        if not isinstance(envelope, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        say(f"FAILED: the provenance is not a JSON envelope ({e})")
        return verdict
    try:
        payload, signed_by = signing.open_envelope(envelope, keys)
    except ValueError as e:
        say(f"FAILED: signature: {e}")
        return verdict
    say(f"signature: good, by key {signed_by}")
    if envelope.get("payloadType") != signing.IN_TOTO_PAYLOAD_TYPE:
        say(f"FAILED: the payload type is {envelope.get('payloadType')!r}, "
            f"not {signing.IN_TOTO_PAYLOAD_TYPE}")
        return verdict
    try:
        statement = json.loads(payload)
        subjects = statement["subject"]
        kind, predicate = statement["_type"], statement["predicateType"]
    except (ValueError, KeyError, TypeError):
        say("FAILED: the signed payload is not an in-toto statement")
        return verdict
    if kind != provenance.STATEMENT_TYPE or predicate != provenance.PREDICATE_TYPE:
        say(f"FAILED: the statement is {kind} / {predicate}, not in-toto v1 SLSA provenance v1")
        return verdict
    verdict.statement = statement
    try:
        actual = sha256_of(package)
    except OSError as e:
        say(f"FAILED: cannot read {package}: {e.strerror}")
        return verdict
    stated = [s for s in subjects if isinstance(s, dict)
              and isinstance(s.get("digest"), dict) and s["digest"].get("sha256") == actual]
    if not stated:
        listed = ", ".join(str((s.get("digest") or {}).get("sha256")) for s in subjects
                           if isinstance(s, dict))
        say(f"FAILED: digest: {package.name} has sha256 {actual}; the statement names {listed}")
        return verdict
    say(f"digest: {package.name} has sha256 {actual}, the one the statement names "
        f"(as {stated[0].get('name')})")
    say(_describe(statement))
    verdict.ok = True
    return verdict


def _describe(statement: dict[str, Any]) -> str:
    """The claims the signature now vouches for, in one paragraph."""
    try:
        predicate = statement["predicate"]
        source = predicate["buildDefinition"]["externalParameters"]["source"]
        resolved = predicate["buildDefinition"]["resolvedDependencies"]
        commit = next(d["digest"]["gitCommit"] for d in resolved if d.get("name") == "source")
        internal = predicate["buildDefinition"]["internalParameters"]
        run = predicate["runDetails"]
        return (f"verified: built by {run['builder']['id']} (build "
                f"{run['metadata']['invocationId']}) from {source['url']} tag {source['ref']} "
                f"commit {commit}, with Erlang/OTP {internal['erlang']['release']} (erts "
                f"{internal['erlang']['erts']}) and {internal['compiler']['name']} "
                f"{internal['compiler']['version']}")
    except (KeyError, TypeError, StopIteration):
        return "verified: the signed statement names this package (its other fields are not ours)"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (http(s) only)
        data = response.read(FETCH_LIMIT + 1)
    if len(data) > FETCH_LIMIT:
        raise ValueError(f"{url} answered more than {FETCH_LIMIT} bytes")
    return data


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    package = Path(args.package)
    try:
        if args.server:
            base = args.server.rstrip("/")
            if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
                print(f"enot-builder verify: --server {base} is not an http(s) URL", file=out)
                return 2
            keys_pem = Path(args.key).read_bytes() if args.key else fetch(base + "/keys")
            which = args.build or sha256_of(package)
            envelope = Path(args.provenance).read_bytes() if args.provenance \
                else fetch(f"{base}/provenance/{urllib.parse.quote(which, safe='')}")
        else:
            if not (args.provenance and args.key):
                print("enot-builder verify: give --provenance FILE and --key FILE, "
                      "or --server URL", file=out)
                return 2
            keys_pem = Path(args.key).read_bytes()
            envelope = Path(args.provenance).read_bytes()
    except (OSError, ValueError, urllib.error.URLError) as e:
        print(f"FAILED: {e}", file=out)
        return 1
    verdict = check(package, envelope, keys_pem)
    for line in verdict.lines:
        print(line, file=out)
    if not verdict.ok:
        print(f"NOT VERIFIED: {package}", file=out)
    return 0 if verdict.ok else 1


def add_parser(commands: Any) -> None:
    sub = commands.add_parser("verify", help="check a package against its signed provenance")
    sub.add_argument("package", metavar="PACKAGE.ep")
    sub.add_argument("--provenance", metavar="FILE",
                     help="the envelope GET /provenance/{build_id} serves")
    sub.add_argument("--key", metavar="FILE", help="the public keys GET /keys serves (PEM)")
    sub.add_argument("--server", metavar="URL", help="fetch what is not given from this server")
    sub.add_argument("--build", metavar="ID",
                     help="with --server: the build id (default: found by the package's sha256)")
