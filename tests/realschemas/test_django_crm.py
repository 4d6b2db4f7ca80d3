"""Django CRM (django-crm-admin 3.1.0 from PyPI) on PostgreSQL and MariaDB.

The schema is what its `setupdata` command makes (Django's migrate and the CRM's fixtures:
89 tables on PostgreSQL); 100 companies with two contacts and a deal each, tags on both,
come through the CRM's ORM. Django's foreign keys cascade in Python, not in the database:
the company is deleted through the ORM the way the CRM's admin does it, and undo finds
contacts, deals and the tag links through the database's foreign keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.realschemas.dbcache import made_once
from tests.realschemas.harness import Schema, exercise
from tests.realschemas.packages import DJANGO_CRM_VERSION, django_manage

FILL = str(Path(__file__).with_name("djangocrm_fill.py"))


def setupdata(url: str) -> None:
    """The CRM's own `setupdata` on the empty database at url (made once per engine, then loaded: dbcache)."""
    made_once(url, f"django-crm-{DJANGO_CRM_VERSION}-setupdata",
              lambda: django_manage(url, "-m", "django", "setupdata"))


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_django_crm_whole_set(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    factory: Callable[[], str] = request.getfixturevalue("pg_url_factory" if kind == "postgresql"
                                                         else "mysql_url_factory")
    src = factory()
    setupdata(src)
    django_manage(src, FILL, "fill", "100")
    schema = Schema(
        name="Django CRM 3.1.0", core_table="crm_contact", damage=["UPDATE crm_contact SET email = ''"],
        top_table="crm_company", top_where="full_name IN ('Company 3', 'Company 8')",
        delete=lambda url: django_manage(url, FILL, "delete", "Company 3", "Company 8"),
        untouched=("crm_tag", "auth_user", "crm_stage"),
    )
    exercise(schema, kind, src, factory, tmp_path)
