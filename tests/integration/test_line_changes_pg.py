"""Every line-change test of the unit tier, again on the real PostgreSQL (row locks, upserts, time zones)."""

from __future__ import annotations

import pytest

from tests.unit.test_line_changes import *  # noqa: F401,F403 — the same specifications
from tests.unit.conftest import provider  # noqa: F401 — fixtures, bound to `deps` below
from tests.unit.test_line_changes import orders  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def deps(pg_deps):
    return pg_deps
