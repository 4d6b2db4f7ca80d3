"""The PostgreSQL cluster archiving into a repository, shared with tests/pitr."""

from tests.pitr.conftest import cluster  # noqa: F401 (a fixture)
