"""Playbook validation: every mistake is refused before anything runs, naming file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crmops.errors import PlaybookInvalid
from crmops.playbooks.load import chain, load_playbook
from crmops.playbooks.template import Pending, render

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "playbooks" / "democrm-1-to-2.yaml"
SHIPPED = sorted((ROOT / "playbooks").glob("*.yaml"))


def _crmops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmops", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_playbooks_pass_check(path: Path, tmp_path: Path) -> None:
    r = _crmops("upgrade", str(path), "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout
    assert len(SHIPPED) >= 2


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = DEMO.read_text()
    assert old in text
    out = tmp_path / "broken.yaml"
    out.write_text(text.replace(old, new, 1))
    return out


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


@pytest.mark.parametrize("old,new,needle,message", [
    ("type: docker, container", "type: dokker, container", "dokker", "unknown step type 'dokker'"),
    ('to: "{{ vars.to_revision }}"', 'to: "{{ vars.to_revison }}"', "to_revison", "no such variable"),
    ('snapshot: "{{ steps.pre_upgrade.snapshot_id }}"', 'snapshot: "{{ steps.swap.previous_image }}"',
     "steps.swap.previous_image", "no step 'swap' runs before this one"),
    ('image: "{{ steps.swap.previous_image }}"', 'image: "{{ steps.swap.old_image }}"', "old_image",
     "outputs are previous_image, image, container"),
    ('expect: 1\n', 'expect: 1\n        timout: 5\n', "timout", "unknown key"),
    ("timeout: 1800", "timeout: -1", "timeout: -1", "greater than 0"),
    ("  - name: app\n", "  - name: app\n   oops: [\n", "oops", ""),
], ids=["step-type", "template-var", "later-step", "unknown-output", "unknown-key", "bad-value", "yaml-syntax"])
def test_a_mistake_is_refused_naming_file_and_line(tmp_path: Path, old: str, new: str, needle: str,
                                                    message: str) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(PlaybookInvalid) as e:
        load_playbook(path)
    line = _line_of(path, needle)
    text = e.value.line()
    assert text.startswith(f"{path} line "), text
    assert message in text
    if message:  # a syntax error is reported where the parser noticed it, at or just after the mistake
        assert f"line {line}:" in text, (text, line)
    else:
        assert int(text.split(" line ")[1].split(":")[0]) in (line, line + 1)
    # the command line says the same in one line with exit code 52, and runs nothing
    r = _crmops("upgrade", str(path), cwd=tmp_path)
    assert r.returncode == 52, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and str(path) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "demo").exists()  # nothing ran: not even the state directory was created


def test_templates_keep_types_and_show_pending_values() -> None:
    ctx = {"vars": {"n": 3}, "steps": {"b": {"snapshot_id": "abc"}}}
    assert render("{{ vars.n }}", ctx) == 3
    assert render("x-{{ vars.n }}-{{ steps.b.snapshot_id }}", ctx) == "x-3-abc"
    pending = render("{{ steps.c.snapshot_id }}", ctx, pending_ok=True)
    assert isinstance(pending, Pending) and str(pending) == "<steps.c.snapshot_id>"


def test_ids_default_and_chain_needs_connected_versions(tmp_path: Path) -> None:
    pb = load_playbook(DEMO)
    assert [s.id for s in pb.stages[0].steps][:2] == ["preflight-1", "preflight-2"]
    assert pb.digest.startswith("sha256:")
    with pytest.raises(PlaybookInvalid, match="gap"):
        chain([pb, pb])


@pytest.mark.parametrize("old,new,message", [
    ("        start_new: [sudo, -u, postgres, /usr/lib/postgresql/17/bin/pg_ctl, -D, /var/lib/postgresql/17/data,\n"
     "                    -l, /var/lib/postgresql/17.log, -w, start]\n", "        start_new: []\n",
     "method pg_upgrade needs start_new"),
    ("        mode: copy\n", "        mode: hardlink\n", "'link', 'clone' or 'copy'"),
    ("        method: pg_upgrade\n        action: rollback\n", "        method: logical\n        action: rollback\n",
     "method logical has nothing to roll back"),
], ids=["missing-command", "bad-mode", "logical-rollback"])
def test_pg_upgrade_parameters_are_checked_before_anything_runs(tmp_path: Path, old: str, new: str,
                                                                 message: str) -> None:
    text = (ROOT / "playbooks" / "democrm-postgres-13-to-17-pg_upgrade.yaml").read_text()
    assert old in text
    path = tmp_path / "pb.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(PlaybookInvalid) as e:
        load_playbook(path)
    assert message in e.value.line(), e.value.line()
