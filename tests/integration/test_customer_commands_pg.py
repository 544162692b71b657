"""The customer-command tests of the unit tier that lean on the database, again on the real
PostgreSQL: the line lock that serializes wrong keys, the aware timestamps of the lock-out, limits
applied whole or not at all, replays."""

from __future__ import annotations

import pytest

from tests.unit.conftest import provider  # noqa: F401 — fixtures, bound to `deps` below
from tests.unit.test_customer_commands import (  # noqa: F401 — the same specifications
    customer,
    test_a_redelivered_wrong_key_counts_once,
    test_a_right_key_resets_the_count_of_wrong_keys,
    test_a_terminated_line_refuses_the_customers_commands_line_terminated,
    test_a_wrong_key_is_rejected_bad_access_key_and_the_failure_is_kept,
    test_an_ids_own_limit_set_by_the_customer_applies_to_its_purchases,
    test_five_wrong_keys_lock_the_customer_id_for_30_minutes,
    test_lowering_the_line_limit_below_the_ids_sum_is_refused,
    test_set_limits_is_applied_whole_or_not_at_all,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def deps(pg_deps):
    return pg_deps
