"""SPEC.md "Security": wrong access keys sent at the same moment are each counted — the 5th locks the
customer ID whatever their interleaving — on the real PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select

from matomete_core.adapters.tables import lines
from matomete_core.service import bus
from matomete_core.testing import jst
from tests.unit.senders import LINE, Customer

pytestmark = pytest.mark.integration

AT = jst("2026-08-10 12:00")
SENDERS = 8


def test_wrong_keys_sent_at_once_are_all_counted_and_the_fifth_locks(pg_deps):
    customer = Customer(pg_deps)
    messages = [customer.message(AT, access_key=f"wrong-{n}", passport_id=None, restricted=True)
                for n in range(SENDERS)]
    start = threading.Barrier(SENDERS)

    def send(message: dict) -> dict:
        start.wait(timeout=30)
        return bus.handle(pg_deps, "matomete.set_restriction", [message], {}, now=AT)

    with ThreadPoolExecutor(SENDERS) as pool:
        reasons = sorted(d["reason"] for d in pool.map(send, messages))

    assert reasons == ["BAD_ACCESS_KEY"] * 5 + ["LOCKED_OUT"] * (SENDERS - 5)
    with pg_deps.engine.connect() as conn:
        state = conn.execute(select(lines.c.failed_key_attempts, lines.c.locked_until).where(
            lines.c.customer_id == LINE)).one()
    assert tuple(state) == (0, AT + timedelta(minutes=30))
