"""A task that outlives its hard time limit: Celery kills its pool process. The message is not lost
with it — the worker rejects it back to its queue (``task_acks_on_timeout=False``) — so it is
decided on a later delivery, or, if it hangs every time, quarantined after MAX_DELIVERIES.

Injected with wrapped_worker.py ``hang:FILE``: the handler swallows the soft time limit (as a library
with a bare ``except Exception`` would), so only the hard limit ends it. With V = 10 s
(MATOMETE_VISIBILITY_TIMEOUT) the hard limit is 6 s (workers/app.py ``timings``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.faults.flow import Flow
from tests.faults.harness import Deployment, occurred_at, report, sign, wait_until

pytestmark = pytest.mark.faults

WRAPPER = str(Path(__file__).with_name("wrapped_worker.py"))


def test_a_message_killed_by_the_hard_time_limit_is_decided_later_or_quarantined_never_lost(deployment):
    # given a worker whose hard time limit is 6 s, in which some purchases hang past it
    d: Deployment = deployment(MATOMETE_VISIBILITY_TIMEOUT="10")
    hung = d.workdir / "hung.txt"
    d.start_worker("w1", concurrency=2, argv=[sys.executable, WRAPPER],
                   env={"MATOMETE_FAULTS_INJECT": f"hang:{hung}"})
    at = occurred_at(2)

    # when one purchase hangs on its first delivery only, another on every delivery,
    once = sign({"message_id": "hang-once-1", "occurred_at": at, "provider_id": "PA", "order_id": "hang-once-1",
                 "passport_id": "f1u1", "content_id": "pack", "quantity": 1})
    always = sign({"message_id": "hang-always-1", "occurred_at": at, "provider_id": "PA",
                   "order_id": "hang-always-1", "passport_id": "f2u2", "content_id": "pack", "quantity": 1})
    d.send("matomete.purchase", "provider-events", once)
    d.send("matomete.purchase", "provider-events", always)
    # and ordinary messages come behind them
    flow = Flow(d, "behind").build(20, first_passport=100)
    flow.send_all()

    # then the ordinary ones are decided, the one that hung once is decided on its next delivery
    # with one charge, and the one that hangs every time ends in the quarantine, not in nowhere
    flow.wait_decided(timeout=120)
    wait_until(lambda: d.sql("SELECT count(*) FROM inbox WHERE message_id = 'hang-once-1'")[0][0] == 1,
               timeout=60, message="hang-once-1 to be decided")
    wait_until(lambda: d.sql("SELECT count(*) FROM quarantine WHERE message_id = 'hang-always-1'")[0][0] == 1,
               timeout=120, message="hang-always-1 to be quarantined")
    decided = dict(d.sql("SELECT message_id, decision->>'status' FROM inbox WHERE message_id LIKE %s", "hang-%"))
    charges = d.sql("SELECT p.order_id, count(c.id) FROM purchases p JOIN charges c "
                    "ON c.application_number = p.application_number WHERE p.order_id LIKE %s "
                    "GROUP BY p.order_id", "hang-%")
    quarantined = d.sql("SELECT reason, detail FROM quarantine WHERE message_id = 'hang-always-1'")
    log = "\n".join(p.read_text(errors="replace") for p in d.logs.values())
    figures = flow.figures()
    report("hard time limit", **figures, hard_limit_kills=log.count("Hard time limit"),
           hang_once=decided.get("hang-once-1"), hang_always=[r for r, _ in quarantined])
    assert decided == {"hang-once-1": "accepted"}
    assert charges == [("hang-once-1", 1)]
    assert quarantined == [("PROCESSING_FAILED", quarantined[0][1])] and "WorkerLostEachTime" in quarantined[0][1]
    assert log.count("Hard time limit") >= 1 + 5  # hang-once once, hang-always on each of its deliveries
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["not_as_expected"] == 0, figures
