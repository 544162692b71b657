"""Integration tier: the real PostgreSQL and Redis of this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from matomete_core.adapters.migrate import upgrade
from matomete_core.config import Settings
from matomete_core.service.deps import Deps, bootstrap
from matomete_core.service.loading import load_catalog, load_lines
from matomete_core.testing import FakePublisher
from tests.unit.conftest import CATALOG, LINES


@pytest.fixture
def pg_settings(pg_url: str, tmp_path: Path) -> Settings:
    upgrade(pg_url)
    return Settings(database_url=pg_url, secret_key=Fernet.generate_key().decode())


def loaded_pg_deps(settings: Settings, tmp_path: Path) -> Deps:
    """The unit tier's catalog and lines, loaded into ``settings``' database."""
    d = bootstrap(settings, publisher=FakePublisher())
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (tmp_path / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(d.engine, d.secrets, tmp_path / "catalog.json")
    load_lines(d.engine, settings, tmp_path / "lines.json")
    return d


@pytest.fixture
def pg_deps(pg_settings: Settings, tmp_path: Path) -> Deps:
    d = loaded_pg_deps(pg_settings, tmp_path)
    yield d
    d.engine.dispose()
