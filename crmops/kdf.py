"""The memory-hard key derivation (scrypt), started on a second core while the command starts up.

Every command that opens a repository with a passphrase pays one scrypt (N=2^15, r=8:
32 MiB, about 0.1 s on this machine's cores). Its parameters are the repository's and stay
as they are; what changes is *when* it runs. hashlib's scrypt releases the interpreter lock
(cryptography's does not), so once the configuration names a passphrase and a local key
slot, the derivation runs in a background thread while the main thread validates the
configuration, imports the repository code and opens the store. `derive` then takes the
finished result for the same passphrase, salt and parameters, or computes it in place.

A derived key is only ever used for the exact (passphrase, salt, n, r, p) it was derived
for, and it still has to open the slot's AES-GCM seal: a stale or foreign slot read ahead
costs CPU, never correctness. Only standard-library imports: this runs before the
configuration model (pydantic) or the repository code is imported.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path

#: slots read ahead at most: each is a full scrypt, done one after another on one thread
MAX_AHEAD = 4

_Params = tuple[str, bytes, int, int, int]
_ahead: dict[_Params, Future[bytes]] = {}
_lock = threading.Lock()


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    need = 128 * r * (n + p + 2)  # OpenSSL's own count of the memory scrypt uses
    if 2 * need < 2**31:
        return hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * need, dklen=32)
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # parameters beyond hashlib's limit

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The 32-byte scrypt key: the one started ahead for exactly these inputs, else computed now."""
    with _lock:
        future = _ahead.pop((passphrase, salt, n, r, p), None)
    if future is not None:
        return future.result()
    return _scrypt(passphrase, salt, n, r, p)


def start(passphrase: str, slots: Iterable[tuple[bytes, int, int, int]]) -> int:
    """Begin deriving the keys of these (salt, n, r, p) slots on one background thread; how many."""
    jobs: list[tuple[_Params, Future[bytes]]] = []
    with _lock:
        for salt, n, r, p in slots:
            params = (passphrase, salt, n, r, p)
            if params in _ahead or len(jobs) >= MAX_AHEAD:
                continue
            future: Future[bytes] = Future()
            _ahead[params] = future
            jobs.append((params, future))
    if not jobs:
        return 0

    def work() -> None:
        for params, future in jobs:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(_scrypt(*params))
                except Exception as e:  # noqa: BLE001 - handed to whoever asks for this key
                    future.set_exception(e)

    threading.Thread(target=work, name="crmops-kdf", daemon=True).start()
    return len(jobs)


def scrypt_slots(folders: Iterable[Path]) -> list[tuple[bytes, int, int, int]]:
    """(salt, n, r, p) of the passphrase key slots stored as files in these keys/ folders."""
    import base64

    found = []
    for folder in folders:
        try:
            names = sorted(folder.iterdir())
        except OSError:
            continue
        for path in names:
            try:
                kdf = json.loads(path.read_bytes())["kdf"]
                if kdf["name"] == "scrypt":
                    found.append((base64.b64decode(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a slot this can read ahead; opening the repository reads it properly
    return found


def start_for_config(data: dict, base: Path, environ: dict[str, str]) -> int:
    """Read the key slots a raw configuration (interpolated, before validation) points at and start
    their derivation: a local repository's keys/, or a remote one's cached copies under state_dir.

    Anything unusual (a key file, no passphrase, a URL this does not parse) starts nothing.
    """
    enc = data.get("encryption") or {}
    repo = data.get("repository") or {}
    if not isinstance(enc, dict) or not isinstance(repo, dict) or enc.get("key_file"):
        return 0
    passphrase = enc.get("passphrase") or environ.get("CRMOPS_PASSPHRASE")
    url = repo.get("url")
    if not isinstance(passphrase, str) or not passphrase or not isinstance(url, str):
        return 0
    if url.startswith("file://"):
        folders = [base / url[len("file://"):] / "keys"]
    else:
        state = data.get("state_dir")
        if not isinstance(state, str):
            return 0
        folders = [d / "keys" for d in sorted((base / state / "cache").glob("*"))]
    return start(passphrase, scrypt_slots(folders))
