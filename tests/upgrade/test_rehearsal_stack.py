"""The rehearsal stack on its own: what the copy of the app is given, where it sits, and how leftovers go."""

from __future__ import annotations

from typing import Any

import pytest

from crmops.config import VerifyConfig
from crmops.playbooks.model import Playbook
from crmops.sandbox import open_sandbox
from crmops.sandbox.leftovers import cleanup, list_sandboxes
from crmops.upgrade.stack import rewrite_env, start_stack

PROD = "postgresql+psycopg://crm:prod-secret@db.internal:5432/crm"
BOX = "postgresql://postgres:box-secret@172.30.0.2:5432/crm_copy"


def test_database_settings_are_pointed_at_the_sandbox_and_nothing_else() -> None:
    env = ["DATABASE_URL=postgres://crm:prod-secret@db.internal:5432/crm?sslmode=require", "DB_HOST=db.internal",
           "PGPASSWORD=prod-secret", "LEGACY=db.internal", "MAIL_HOST=smtp.example.com", "CRM_SETTING=kept",
           "REPORTS_DSN=whatever"]
    out, changed = rewrite_env(env, PROD, BOX, {"REPORTS_DSN": "url", "CRM_DB_NAME": "database"})
    got = dict(e.split("=", 1) for e in out)
    assert got["DATABASE_URL"] == "postgres://postgres:box-secret@172.30.0.2:5432/crm_copy?sslmode=require"
    assert got["DB_HOST"] == got["LEGACY"] == "172.30.0.2" and got["PGPASSWORD"] == "box-secret"
    assert got["REPORTS_DSN"] == "postgresql://postgres:box-secret@172.30.0.2:5432/crm_copy"
    assert got["CRM_DB_NAME"] == "crm_copy"  # named by the playbook though production's container lacks it
    assert got["MAIL_HOST"] == "smtp.example.com" and got["CRM_SETTING"] == "kept"
    assert sorted(changed) == ["CRM_DB_NAME", "DATABASE_URL", "DB_HOST", "LEGACY", "PGPASSWORD", "REPORTS_DSN"]
    assert "prod-secret" not in " ".join(out)


@pytest.mark.docker
def test_the_copy_is_private_and_a_leftover_goes_with_its_sandbox(docker_client: Any) -> None:
    pb = Playbook.model_validate({
        "name": "image copy", "from_version": "1", "to_version": "2",
        "stages": [{"name": "a", "steps": [{"type": "shell", "command": "true"}]}],
        "rehearsal": {"image": "crmops-demo-app:1.0", "app_url": "http://127.0.0.1:9",
                      "database_env": {"DATABASE_URL": "url"}}})
    with open_sandbox(VerifyConfig(), "postgresql", "15.4", database="crm") as sb:
        stack = start_stack(sb.client, sb.name, sb.url, PROD, pb, {"crmops.pid": "1", "crmops.host": "elsewhere"})
        try:
            attrs = docker_client.containers.get(stack.name).attrs
            assert list(attrs["NetworkSettings"]["Networks"]) == [sb.name]
            assert docker_client.networks.get(sb.name).attrs["Internal"] is True
            assert not attrs["HostConfig"].get("PortBindings") and attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
            env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
            assert env["DATABASE_URL"] == sb.url and stack.env_rewritten == ["DATABASE_URL"]
            assert stack.map_url("http://127.0.0.1:9/health") == stack.base_url() + "/health"
            assert stack.map_url("http://127.0.0.1:90/health") is None
            # a dry run killed by SIGKILL leaves this behind: listed, and removed by naming its sandbox
            listed = {e.name: e for e in list_sandboxes(docker_client)}
            assert listed[stack.name].kind == "container" and listed[stack.name].engine == "app"
            removed, _ = cleanup(docker_client, names=[sb.name])
            assert sb.name in [e.name for e in removed]
            assert docker_client.containers.list(all=True, filters={"label": f"crmops.stack={sb.name}"}) == []
            assert docker_client.networks.list(names=[sb.name]) == []
        finally:
            stack.remove()
