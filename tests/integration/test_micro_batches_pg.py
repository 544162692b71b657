"""The micro-batch specifications of the unit tier, again on the real PostgreSQL, where the batch
takes its advisory locks and row locks and writes with multi-row RETURNING."""

from __future__ import annotations

from dataclasses import replace

import pytest

from matomete_core.adapters.migrate import upgrade
from matomete_core.service.close import close_month
from tests.integration.conftest import loaded_pg_deps
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.unit.conftest import jst
from tests.unit.test_micro_batches import *  # noqa: F401,F403 — the same specifications

pytestmark = pytest.mark.integration


@pytest.fixture
def deps(pg_deps):  # noqa: ANN001, ANN201
    return pg_deps


@pytest.fixture
def twin(deps, tmp_path):  # noqa: ANN001, ANN201
    """A second PostgreSQL database loaded like ``deps``'s, and July closed in both."""
    url = fresh_pg_database("matomete_twin")
    try:
        upgrade(url)
        (tmp_path / "twin").mkdir()
        other = loaded_pg_deps(replace(deps.settings, database_url=url), tmp_path / "twin")
        for d, where in ((deps, "x1"), (other, "x2")):
            close_month(d.engine, "2026-07", now=jst("2026-08-01 03:00"), export_dir=tmp_path / where)
        yield other
        other.engine.dispose()
    finally:
        drop_pg_database(url)
