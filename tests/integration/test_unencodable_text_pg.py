"""tests/unit/test_unencodable_text_is_quarantined.py on PostgreSQL, which also refuses NUL in text."""

from __future__ import annotations

import pytest

from tests.unit.test_unencodable_text_is_quarantined import quarantines_a_failure, quarantines_each

pytestmark = pytest.mark.integration


def test_messages_with_lone_surrogates_or_nul_are_quarantined_on_postgresql(pg_deps):
    quarantines_each(pg_deps)


def test_a_failed_message_with_lone_surrogates_is_quarantined_on_postgresql(pg_deps):
    quarantines_a_failure(pg_deps)
