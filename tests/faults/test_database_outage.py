"""PostgreSQL goes away in the middle of a stream — stopped as if it crashed, unreachable for 30 s,
then started again — on the dedicated cluster of this session (never the shared one).

A decision is one transaction; an error that says the database is unreachable or restarting is
transient (adapters.database.is_transient), so the task — or the batch, under a batch worker —
retries with backoff (1, 2, 4 … 30 s, for as long as it lasts) and is never turned into a decision.
So after the outage every message is decided exactly as it would have been, and none is rejected
or quarantined because of it.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.flow import Flow
from tests.faults.harness import Deployment, report, wait_until

pytestmark = pytest.mark.faults

OUTAGE_S = 30


@pytest.mark.parametrize("mode", ["worker", "batch-worker"])
def test_postgresql_down_for_30_seconds_mid_stream_delays_decisions_but_changes_none(deployment, dedicated_pg, mode):
    # given a worker (or a batch worker) with the default settings, and 200 provider messages flowing in
    d: Deployment = deployment()
    if mode == "worker":
        d.start_worker("w1")
    else:
        d.start_batch_worker("w1")
    flow = Flow(d, "pgdown").build(200).start(pace=0.05)
    wait_until(lambda: flow.decided() >= 40, timeout=60, message="the flow to get going")

    # when PostgreSQL stops as if it crashed, stays down for 30 s while messages keep coming, and comes back
    decided_before = flow.decided()
    down_at = time.monotonic()
    dedicated_pg.stop("immediate")
    time.sleep(OUTAGE_S)
    dedicated_pg.start()
    up_at = time.monotonic()
    flow.join()

    # then every message is decided, within about one backoff step of the database's return
    done_at = flow.wait_decided(timeout=150)
    d.relay_and_wait()
    outbound = flow.outbound_gaps(d.drain_outbound())
    figures = flow.figures()
    retries = sum(log.read_text(errors="replace").count("transient error, retrying") for log in d.logs.values())
    report(f"postgresql restarted under a {mode}", **figures, decided_before_outage=decided_before,
           outage_s=round(up_at - down_at, 1), transient_retries_logged=retries,
           recovery_s=round(done_at - up_at, 1), outbound=outbound)
    # once, each with its charge, accepted as without the outage; nothing quarantined for it
    assert retries > 0  # the outage was felt
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["not_as_expected"] == 0 and figures["quarantined"] == {}, figures
    assert outbound["gaps"] == 0 and outbound["mismatched"] == 0, outbound
