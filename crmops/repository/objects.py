"""Sealed objects: zstd-compressed, AES-256-GCM encrypted, bound to their name.

The object's name (a chunk id, or "manifest:<snapshot id>") is the AEAD's associated
data, so a stored object swapped for another, truncated, or altered by one bit fails
authentication and is reported by name instead of being restored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crmops.errors import IntegrityError
from crmops.repository.keys import MasterKey

VERSION = 1
HEADER = bytes([VERSION])
NONCE = 12
#: objects larger than this (compressed) are refused when decompressing
MAX_PLAIN = 1 << 30


class Sealer:
    """Seal and open objects with one repository's keys; safe to share between threads."""

    def __init__(self, key: MasterKey, level: int = 1) -> None:
        self._aead = AESGCM(key.enc_key)
        self._id_key = key.id_key
        self.level = level
        self._local = threading.local()  # a compressor per thread: contexts are costly to set up

    def chunk_id(self, plaintext: bytes) -> str:
        """Keyed hash: equal content dedups, yet ids reveal nothing about the content."""
        return hmac.new(self._id_key, plaintext, hashlib.sha256).hexdigest()

    def seal(self, plaintext: bytes, name: str) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.level)
        return self.seal_compressed(compressor.compress(plaintext), name)

    def seal_compressed(self, compressed: bytes, name: str) -> bytes:
        """Seal content already compressed: re-encrypting another repository's object (a copy with
        its own keys) costs no second compression, and the sealed size stays the same."""
        nonce = secrets.token_bytes(NONCE)
        return HEADER + nonce + self._aead.encrypt(nonce, compressed, name.encode())

    def authenticate(self, sealed: bytes, name: str, where: str) -> bytes:
        """The compressed content once its tag checks, or IntegrityError naming the stored object.

        Enough to prove an object is what the repository stored under that name: only the key
        holder can make a tag that checks, so decompression and the content id cannot fail after.
        """
        if len(sealed) < 1 + NONCE + 16:
            raise IntegrityError(f"{where} is truncated ({len(sealed)} bytes)")
        if sealed[0] != VERSION:
            raise IntegrityError(f"{where} has unknown object version {sealed[0]}")
        try:
            return self._aead.decrypt(sealed[1:1 + NONCE], sealed[1 + NONCE:], name.encode())
        except InvalidTag:
            raise IntegrityError(f"{where} fails authentication (damaged or tampered with)") from None

    def open(self, sealed: bytes, name: str, where: str) -> bytes:
        """The plaintext, or IntegrityError naming the stored object."""
        compressed = self.authenticate(sealed, name, where)
        return zstandard.ZstdDecompressor().decompress(compressed, max_output_size=MAX_PLAIN)

    def open_chunk(self, sealed: bytes, chunk_id: str, where: str) -> bytes:
        plaintext = self.open(sealed, chunk_id, where)
        if not hmac.compare_digest(self.chunk_id(plaintext), chunk_id):
            raise IntegrityError(f"{where} holds content that does not match its id")
        return plaintext
