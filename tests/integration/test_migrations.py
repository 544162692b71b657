"""The Alembic migrations build exactly the schema the code describes, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from matomete_core.adapters.migrate import upgrade
from matomete_core.adapters.tables import metadata

pytestmark = pytest.mark.integration


def _drift(url: str) -> list:
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    return diff


def test_migrations_match_the_tables_on_postgresql(pg_url):
    assert _drift(pg_url) == []


def test_migrations_match_the_tables_on_sqlite(tmp_path):
    assert _drift(f"sqlite:///{tmp_path / 'm.db'}") == []


def test_upgrading_twice_changes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    assert _drift(url) == []
