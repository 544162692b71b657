"""Pruning the published outbox on PostgreSQL: the same rule as tests/unit/test_outbox_retention.py."""

from __future__ import annotations

import pytest

from tests.unit.test_outbox_retention import published_rows_past_the_retention_are_pruned_and_no_other

pytestmark = pytest.mark.integration


def test_published_outbox_rows_past_the_retention_are_pruned_and_unpublished_ones_stay_pg(pg_deps):
    published_rows_past_the_retention_are_pruned_and_no_other(pg_deps)
