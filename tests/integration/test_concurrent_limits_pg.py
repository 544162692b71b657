"""SPEC.md "Deciding a purchase": two purchases for one line decided at the same moment by two
worker processes never together exceed a limit — on the real PostgreSQL, whether each process
decides a message at a time (`matomete worker`), in micro-batches (`matomete batch-worker`), or one
of each."""

from __future__ import annotations

import multiprocessing
from datetime import datetime

import pytest
from sqlalchemy import update

from matomete_core.adapters.tables import lines
from matomete_core.config import Settings
from matomete_core.service.billing import usage
from tests.unit.conftest import SECRETS

pytestmark = pytest.mark.integration

ROUNDS = 12
LINE_LIMIT = 1000


def _occurred(round_no: int) -> datetime:
    from matomete_core.testing import jst

    return jst(f"{2025 + round_no // 12}-{round_no % 12 + 1:02d}-15 12:00")


def _decide_in_process(settings: Settings, passport_id: str, mode: str, barrier, results) -> None:  # noqa: ANN001
    from matomete_core.service import batch, bus
    from matomete_core.service.deps import bootstrap
    from matomete_core.testing import signed

    deps = bootstrap(settings)
    for n in range(ROUNDS):
        at = _occurred(n)
        msg = signed({"message_id": f"{passport_id}-{n}", "occurred_at": at.isoformat(), "provider_id": "PB",
                      "order_id": f"{passport_id}-{n}", "passport_id": passport_id, "content_id": "coin",
                      "quantity": 6}, SECRETS["PB"])
        barrier.wait(timeout=60)
        if mode == "batch":  # with a purchase for another line in the same batch
            other = signed({"message_id": f"{passport_id}-{n}-other", "occurred_at": at.isoformat(),
                            "provider_id": "PB", "order_id": f"{passport_id}-{n}-other", "passport_id": "nobody",
                            "content_id": "coin", "quantity": 1}, SECRETS["PB"])
            decision = batch.decide_batch(deps, [("matomete.purchase", [msg], {}),
                                                 ("matomete.purchase", [other], {})], now=at)[0]
        else:
            decision = bus.handle(deps, "matomete.purchase", [msg], {}, now=at)
        results.put((n, passport_id, decision))
    deps.engine.dispose()


@pytest.mark.parametrize("modes", [("task", "task"), ("batch", "batch"), ("task", "batch")])
def test_two_workers_deciding_at_once_never_exceed_the_line_limit(pg_deps, pg_settings, modes):
    # given a line whose limit fits one 600-yen purchase a month, not two
    with pg_deps.engine.begin() as conn:
        conn.execute(update(lines).where(lines.c.customer_id == "CAF0000012573").values(line_limit=LINE_LIMIT))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # when two processes buy for two IDs of that line at the same moment, month after month
    workers = [ctx.Process(target=_decide_in_process, args=(pg_settings, pid, mode, barrier, results))
               for pid, mode in zip(("user01", "user03"), modes)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    # then each month exactly one is accepted and the other refused, and usage stays within the limit
    by_round: dict[int, list[str]] = {}
    for n, _pid, decision in outcomes:
        by_round.setdefault(n, []).append(decision["reason"] or decision["status"])
    assert all(sorted(v) == ["LINE_LIMIT_EXCEEDED", "accepted"] for v in by_round.values()), by_round
    with pg_deps.engine.connect() as conn:
        for n in range(ROUNDS):
            month = _occurred(n).strftime("%Y-%m")
            assert usage(conn, month, open_month=True, customer_id="CAF0000012573") == 600
