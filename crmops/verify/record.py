"""Signed verification records: proof, checkable offline, that a snapshot restored and matched.

A record is canonical JSON (sorted keys, no spaces) plus a signature over those bytes:
HMAC-SHA256 with a key derived from the repository's master key (checking needs the
repository key), or Ed25519 with config.verify.signing_key_file (checking needs only the
public key, so an auditor without access to the backups can check it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from crmops.errors import ConfigError, IntegrityError, KeyFileMissing

KIND = "verification"


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _load_private(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise KeyFileMissing(f"{path}: cannot read the signing key ({e.strerror})",
                             hint="check verify.signing_key_file") from None
    except ValueError:
        raise ConfigError(f"{path}: not an unencrypted PEM private key",
                          hint="create one with `openssl genpkey -algorithm ed25519 -out FILE`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: the signing key must be Ed25519",
                          hint="create one with `openssl genpkey -algorithm ed25519 -out FILE`")
    return key


def _raw_public(public: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_fingerprint(raw_public: bytes) -> str:
    """Short, comparable name of a public key: SHA-256 of its raw bytes, first 16 hex digits."""
    return "SHA256:" + hashlib.sha256(raw_public).hexdigest()[:16]


def sign(body: dict[str, Any], *, record_key: bytes, repository_id: str,
         signing_key_file: Path | None = None) -> dict[str, Any]:
    """The signed record {"record": body, "signature": {...}}."""
    data = canonical(body)
    if signing_key_file is not None:
        key = _load_private(signing_key_file)
        raw = _raw_public(key.public_key())
        sig = {"alg": "ed25519", "public_key": base64.b64encode(raw).decode(), "key_id": key_fingerprint(raw),
               "value": base64.b64encode(key.sign(data)).decode()}
    else:
        sig = {"alg": "hmac-sha256", "repository": repository_id,
               "value": hmac.new(record_key, data, hashlib.sha256).hexdigest()}
    return {"record": body, "signature": sig}


def check(signed: dict[str, Any], *, record_key: bytes | None = None, repository_id: str | None = None,
          public_key_file: Path | None = None) -> dict[str, Any]:
    """Check a signed record's signature; IntegrityError if it does not hold. Returns what was checked."""
    try:
        body, sig = signed["record"], signed["signature"]
        alg = sig["alg"]
    except (KeyError, TypeError):
        raise IntegrityError("not a crmops verification record (no record/signature)") from None
    data = canonical(body)
    if alg == "ed25519":
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        embedded = base64.b64decode(sig["public_key"])
        trusted = embedded
        if public_key_file is not None:
            trusted = _load_public(public_key_file)
            if trusted != embedded:
                raise IntegrityError(f"the record was signed by key {key_fingerprint(embedded)}, not by "
                                     f"{public_key_file} ({key_fingerprint(trusted)})")
        try:
            Ed25519PublicKey.from_public_bytes(trusted).verify(base64.b64decode(sig["value"]), data)
        except (InvalidSignature, ValueError):
            raise IntegrityError("the record's Ed25519 signature does not match its content (altered)") from None
        return {"alg": alg, "key_id": key_fingerprint(trusted), "trusted_key": public_key_file is not None}
    if alg == "hmac-sha256":
        if record_key is None:
            raise ConfigError("this record is signed with the repository key",
                              hint="run with the configuration and passphrase/key file of its repository")
        if repository_id is not None and sig.get("repository") != repository_id:
            raise IntegrityError(f"the record belongs to repository {sig.get('repository')}, "
                                 f"not to the configured {repository_id}")
        want = hmac.new(record_key, data, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, str(sig.get("value", ""))):
            raise IntegrityError("the record's signature does not match its content (altered, or another key)")
        return {"alg": alg, "repository": sig.get("repository"), "trusted_key": True}
    raise IntegrityError(f"unknown record signature algorithm {alg!r}")


def _load_public(path: Path) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    try:
        pem = path.read_bytes()
    except OSError as e:
        raise KeyFileMissing(f"{path}: cannot read the public key ({e.strerror})") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        try:
            key = load_pem_private_key(pem, password=None)
        except ValueError:
            raise ConfigError(f"{path}: not a PEM Ed25519 key") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return _raw_public(key)


# -- records in the repository, for `crmops snapshots` and upgrades ---------------------

def latest_verification(repo: Any, snapshot_id: str) -> dict[str, Any] | None:
    """The newest verification of a snapshot: {verified_at, ok, first_failure, image, record_id...}, or None.

    Records come out of the repository authenticated (AEAD), so they are trusted as stored.
    """
    found = [r for r in repo.records(snapshot_id) if r.get("kind") == KIND and "record" in r]
    if not found:
        return None
    body = found[-1]["record"]
    return {"verified_at": body.get("verified_at"), "ok": bool(body.get("ok")),
            "first_failure": body.get("first_failure"), "image": body.get("image"),
            "restore_seconds": body.get("restore_seconds"), "signature": found[-1]["signature"]["alg"]}


def is_verified_ok(repo: Any, snapshot_id: str) -> bool:
    """True only if the snapshot's latest verification passed; never-verified and failed are both False."""
    latest = latest_verification(repo, snapshot_id)
    return bool(latest and latest["ok"])
