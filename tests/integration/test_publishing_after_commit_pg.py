"""On PostgreSQL, publishing right after a commit marks exactly the rows it published (one array
parameter, whatever their number), and the mark's relaxed durability stays with that one statement:
the pooled connection the next decision commits on still waits for its WAL flush."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from matomete_core.adapters.relay import publish_written, relay
from matomete_core.adapters.tables import outbox
from matomete_core.service import bus
from matomete_core.testing import over_the_wire, signed
from tests.unit.conftest import SECRETS, jst

pytestmark = pytest.mark.integration

AT = jst("2026-08-10 12:00")


def _decide(deps, n: int) -> list:  # noqa: ANN001
    committed: list = []
    body = signed({"message_id": f"m{n}", "occurred_at": AT.isoformat(), "provider_id": "PB", "order_id": f"o{n}",
                   "passport_id": "user02", "content_id": "coin", "quantity": 1}, SECRETS["PB"])
    assert bus.handle(deps, "matomete.purchase", [over_the_wire(body)], {}, now=AT,
                      on_commit=committed.extend)["status"] == "accepted"
    return committed


def _unpublished(deps) -> set[str]:  # noqa: ANN001
    with deps.engine.connect() as conn:
        return set(conn.execute(select(outbox.c.event_id).where(outbox.c.published_at.is_(None))).scalars())


def test_publishing_after_commit_marks_exactly_the_rows_it_published_on_postgresql(pg_deps):
    first, second, third = _decide(pg_deps, 1), _decide(pg_deps, 2), _decide(pg_deps, 3)
    publish_written(pg_deps.engine, pg_deps.publisher, first + third, now=AT)
    assert _unpublished(pg_deps) == {r.event_id for r in second}
    publish_written(pg_deps.engine, pg_deps.publisher, second, now=AT)
    assert _unpublished(pg_deps) == set()
    assert relay(pg_deps.engine, pg_deps.publisher, now=AT) == 0
    with pg_deps.engine.connect() as conn:
        assert conn.execute(select(outbox.c.published_at).distinct()).scalars().all() == [AT]


def test_the_mark_published_relaxed_durability_does_not_outlive_its_statement(pg_deps):
    pg_deps.engine.dispose()
    publish_written(pg_deps.engine, pg_deps.publisher, _decide(pg_deps, 1), now=AT)
    assert pg_deps.engine.pool.checkedin() == 1  # the next checkout gets that very connection
    with pg_deps.engine.connect() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
