"""Every month-close test of the unit tier, again on the real PostgreSQL (its JSON and upsert SQL differ)."""

from __future__ import annotations

import pytest

from tests.unit.test_month_close import *  # noqa: F401,F403 — the same specifications
from tests.unit.conftest import provider  # noqa: F401 — fixtures, bound to `deps` below
from tests.unit.test_month_close import close  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def deps(pg_deps):
    return pg_deps
