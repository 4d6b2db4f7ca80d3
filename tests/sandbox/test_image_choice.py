"""Which image a snapshot's server needs: from config templates, no Docker involved."""

from __future__ import annotations

import pytest

from crmops.config import VerifyConfig
from crmops.errors import ConfigError
from crmops.sandbox import image_for, open_sandbox
from crmops.sandbox.docker import safe_database_name

IMAGES = VerifyConfig().images


@pytest.mark.parametrize(("engine", "version", "image"), [
    ("postgresql", "15.18", "postgres:15"),
    ("postgresql", "16.2 (Debian 16.2-1.pgdg120+2)", "postgres:16"),
    ("mysql", "10.11.18-MariaDB-0+deb12u1", "mariadb:10.11"),
    ("mysql", "8.0.36", "mysql:8.0"),
])
def test_default_images_follow_the_official_names(engine: str, version: str, image: str) -> None:
    assert image_for(IMAGES, engine, version) == image


def test_configured_template_and_its_errors() -> None:
    assert image_for({"postgresql": "registry.local/pg:{major}-alpine"}, "postgresql", "15.4") == \
        "registry.local/pg:15-alpine"
    with pytest.raises(ConfigError, match="verify.images.mariadb"):
        image_for({"postgresql": "postgres:{major}"}, "mysql", "10.11.2-MariaDB")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        image_for({"postgresql": "postgres:{minor}"}, "postgresql", "15.4")


def test_database_names_are_made_safe_for_the_image_contract() -> None:
    assert safe_database_name("crm_prod") == "crm_prod"
    assert safe_database_name("crm-prod; drop") == "crmproddrop"
    assert safe_database_name("1crm") == "crm"
    assert safe_database_name(None) == "crm"


def test_sqlite_sandbox_is_a_private_directory_removed_afterwards() -> None:
    with open_sandbox(VerifyConfig(), "sqlite", "3.40.1", database="crm.db") as sb:
        assert sb.kind == "sqlite" and sb.url.startswith("sqlite:///")
        folder = sb.dir
        assert folder is not None and folder.is_dir()
        (folder / "crm.db").write_bytes(b"x")
    assert not folder.exists()
