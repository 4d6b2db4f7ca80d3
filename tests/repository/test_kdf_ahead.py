"""The passphrase's scrypt, begun on another core while the configuration is read (crmops.kdf):
the same key as before for existing repositories, used only for the slot it was derived for."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from crmops import kdf
from crmops.errors import WrongKey
from crmops.repository import Credential, Repository
from crmops.repository.keys import SCRYPT
from crmops.storage.local import LocalStore


def _slot(repo_dir: Path) -> dict:
    (path,) = (repo_dir / "keys").iterdir()
    return json.loads(path.read_text())


def test_same_key_as_the_scrypt_existing_repositories_were_made_with() -> None:
    salt = os.urandom(16)
    old = Scrypt(salt=salt, length=32, n=SCRYPT["n"], r=SCRYPT["r"], p=SCRYPT["p"]).derive("pässword".encode())
    assert kdf.derive("pässword", salt, SCRYPT["n"], SCRYPT["r"], SCRYPT["p"]) == old


def test_key_derived_ahead_opens_the_repository_and_is_used_once(tmp_path: Path) -> None:
    Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="pw"))
    data = {"repository": {"url": "file://repo"}, "encryption": {"passphrase": "pw"}}
    assert kdf.start_for_config(data, tmp_path, {}) == 1
    slot = _slot(tmp_path / "repo")
    params = ("pw", base64.b64decode(slot["kdf"]["salt"]), slot["kdf"]["n"], slot["kdf"]["r"], slot["kdf"]["p"])
    assert params in kdf._ahead
    repo = Repository.open(LocalStore(tmp_path / "repo"), Credential(passphrase="pw"))
    assert params not in kdf._ahead  # taken by the open, not derived a second time
    assert repo.key.secret


def test_a_wrong_passphrase_read_ahead_opens_nothing(tmp_path: Path) -> None:
    Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="right"))
    env = {"CRMOPS_PASSPHRASE": "wrong"}
    assert kdf.start_for_config({"repository": {"url": f"file://{tmp_path}/repo"}}, Path("/"), env) == 1
    with pytest.raises(WrongKey):
        Repository.open(LocalStore(tmp_path / "repo"), Credential(passphrase="wrong"))
    assert Repository.open(LocalStore(tmp_path / "repo"), Credential(passphrase="right")).key.secret


@pytest.mark.parametrize("data", [
    {"repository": {"url": "file://repo"}, "encryption": {"key_file": "k", "passphrase": "pw"}},
    {"repository": {"url": "file://repo"}},  # no passphrase anywhere
    {"repository": {"url": "s3://bucket/x"}, "encryption": {"passphrase": "pw"}},  # no state_dir: no cache
    {"repository": {"url": "file://elsewhere"}, "encryption": {"passphrase": "pw"}},
])
def test_nothing_started_without_a_passphrase_slot_to_read(tmp_path: Path, data: dict) -> None:
    Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="pw"))
    assert kdf.start_for_config(data, tmp_path, {}) == 0


def test_remote_repository_slots_read_from_the_local_copies(tmp_path: Path) -> None:
    Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="pw"))
    cached = tmp_path / "state" / "cache" / "0123abcd" / "keys"
    cached.mkdir(parents=True)
    (cached / "slot").write_text(json.dumps(_slot(tmp_path / "repo")))
    data = {"repository": {"url": "s3://bucket/x"}, "encryption": {"passphrase": "pw2"}, "state_dir": "state"}
    assert kdf.start_for_config(data, tmp_path, {}) == 1


def test_snapshots_command_opens_with_the_key_begun_ahead(tmp_path: Path) -> None:
    """End to end through the command line: the repository opens and lists (scrypt begun early)."""
    Repository.init(LocalStore(tmp_path / "repo"), Credential(passphrase="pw"))
    (tmp_path / "crmops.yaml").write_text(
        f"database: {{url: 'sqlite:///{tmp_path}/crm.db'}}\nrepository: {{url: 'file://{tmp_path}/repo'}}\n"
        f"encryption: {{passphrase: '${{TEST_PW}}'}}\nstate_dir: {tmp_path}/state\n")
    env = {**os.environ, "TEST_PW": "pw"}
    out = subprocess.run([sys.executable, "-m", "crmops", "--config", str(tmp_path / "crmops.yaml"), "--json",
                          "snapshots"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    env["TEST_PW"] = "not it"
    out = subprocess.run([sys.executable, "-m", "crmops", "--config", str(tmp_path / "crmops.yaml"), "snapshots"],
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "does not open the repository" in out.stderr
