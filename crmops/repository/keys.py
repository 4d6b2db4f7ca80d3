"""The repository's master key, and the key slots that wrap it.

One random 64-byte master secret per repository; it is stored only wrapped, once per
slot, by a key-encryption key derived from a passphrase (scrypt, memory-hard) or
from a key file's 32 random bytes (HKDF). Removing a slot removes one way in
without re-encrypting any data. See docs/FORMAT.md for the exact layout.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crmops import kdf as scrypt_kdf
from crmops.errors import ConfigError, KeyFileMissing, WrongKey

SCRYPT = {"n": 2**15, "r": 8, "p": 1}
KEY_FILE_MAGIC = "crmops-key-v1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def hkdf(secret: bytes, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


@dataclass(frozen=True)
class MasterKey:
    """The two keys every object is protected with, derived from the master secret."""

    secret: bytes

    @property
    def enc_key(self) -> bytes:
        return hkdf(self.secret, b"crmops encryption")

    @property
    def id_key(self) -> bytes:
        return hkdf(self.secret, b"crmops chunk id")

    @property
    def record_key(self) -> bytes:
        """For signing verification records (HMAC), never used to encrypt."""
        return hkdf(self.secret, b"crmops record signing")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(64))


@dataclass(frozen=True)
class Credential:
    """What the user brings: a passphrase or a key file (never both needed)."""

    passphrase: str | None = None
    key_file: Path | None = None

    def key_file_secret(self) -> bytes:
        assert self.key_file is not None
        try:
            data = json.loads(self.key_file.read_text())
            if data.get("format") != KEY_FILE_MAGIC:
                raise ValueError
            return unb64(data["key"])
        except FileNotFoundError:
            raise KeyFileMissing(f"{self.key_file}: key file not found",
                                 hint="check encryption.key_file, or restore the key file from its safe copy") from None
        except PermissionError:
            raise KeyFileMissing(f"{self.key_file}: key file is not readable by this user") from None
        except (ValueError, KeyError):
            raise WrongKey(f"{self.key_file}: not a crmops key file") from None

    @property
    def kind(self) -> str:
        return "keyfile" if self.key_file is not None else "passphrase"


def write_key_file(path: Path) -> None:
    """A new key file (0600): 32 random bytes, to be kept safe apart from the repository."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": KEY_FILE_MAGIC, "key": b64(secrets.token_bytes(32)),
                   "created": datetime.now(UTC).isoformat(timespec="seconds")}, f)


def _kek(cred: Credential, kdf: dict[str, Any]) -> bytes:
    salt = unb64(kdf["salt"])
    if kdf["name"] == "scrypt":
        if cred.passphrase is None:
            raise WrongKey("this key slot needs a passphrase")
        return scrypt_kdf.derive(cred.passphrase, salt, kdf["n"], kdf["r"], kdf["p"])  # maybe begun ahead
    if kdf["name"] == "hkdf-sha256":
        if cred.key_file is None:
            raise WrongKey("this key slot needs a key file")
        return hkdf(cred.key_file_secret(), b"crmops key file", salt=salt)
    raise ConfigError(f"unknown key derivation {kdf['name']!r}")


def wrap(master: MasterKey, cred: Credential, *, repo_id: str, slot_id: str, label: str) -> dict[str, Any]:
    """A key slot document: the master secret sealed under the credential's KEK."""
    if cred.key_file is not None:
        kdf: dict[str, Any] = {"name": "hkdf-sha256", "salt": b64(secrets.token_bytes(16))}
    elif cred.passphrase:
        kdf = {"name": "scrypt", "salt": b64(secrets.token_bytes(16)), **SCRYPT}
    else:
        raise ConfigError("no passphrase or key file given",
                          hint="set CRMOPS_PASSPHRASE or encryption.passphrase, or encryption.key_file")
    nonce = secrets.token_bytes(12)
    aad = f"crmops-key:{repo_id}:{slot_id}".encode()
    wrapped = AESGCM(_kek(cred, kdf)).encrypt(nonce, master.secret, aad)
    created = datetime.now(UTC).isoformat(timespec="milliseconds")
    return {"id": slot_id, "label": label, "kind": cred.kind, "created": created,
            "kdf": kdf, "nonce": b64(nonce), "wrapped": b64(wrapped)}


def unwrap(slot: dict[str, Any], cred: Credential, *, repo_id: str) -> MasterKey:
    """The master key, or WrongKey when this credential does not open this slot."""
    kdf = slot["kdf"]
    if (kdf["name"] == "scrypt") != (cred.kind == "passphrase"):
        raise WrongKey("slot kind mismatch")
    aad = f"crmops-key:{repo_id}:{slot['id']}".encode()
    try:
        return MasterKey(AESGCM(_kek(cred, kdf)).decrypt(unb64(slot["nonce"]), unb64(slot["wrapped"]), aad))
    except InvalidTag:
        raise WrongKey("wrong passphrase or key file") from None
