"""The outbox relay killed between publishing and marking — the real-process version of
tests/integration/test_relay_redis.py: a `matomete worker` whose relay (after each decision)
publishes slowly (wrapped_worker.py ``slow-relay``) is SIGKILLed, whole, once it has published
some events; an ordinary worker then takes over. Consumers see the events whose publication was
never marked twice, with the same ``event_id`` and body, and never miss one.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.flow import Flow
from tests.faults.harness import Deployment, report, wait_until

pytestmark = pytest.mark.faults

WRAPPER = str(Path(__file__).with_name("wrapped_worker.py"))
VISIBILITY_S = 12


def test_a_relay_killed_between_publishing_and_marking_publishes_again_with_the_same_event_ids(deployment):
    # given a worker whose relay announces each publish in a file and then dawdles
    d: Deployment = deployment(MATOMETE_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    announced = d.workdir / "published.txt"
    announced.touch()
    d.start_worker("victim", concurrency=1, argv=[sys.executable, WRAPPER],
                   env={"MATOMETE_FAULTS_INJECT": f"slow-relay:{announced}"})
    flow = Flow(d, "relay").build(40)
    flow.send_all()

    # when it is SIGKILLed, pool and all, right after its 12th publish — within the pause that
    # follows it, so before the relay could mark its batch published
    wait_until(lambda: len(announced.read_text().split()) >= 12, timeout=90, interval=0.01,
               message="a dozen publishes")
    d.kill("victim")
    killed_at = time.monotonic()
    published = set(announced.read_text().split())
    unmarked = {e for (e,) in d.sql("SELECT event_id FROM outbox WHERE published_at IS NULL")}
    published_not_marked = published & unmarked

    # and an ordinary worker takes over the queue and the outbox
    d.start_worker("w1")
    flow.wait_decided(timeout=VISIBILITY_S + 90)
    d.relay_and_wait()
    recovered_at = time.monotonic()

    # then every event arrived, those published but never marked twice, each copy the same
    seen = d.drain_outbound()
    outbound = flow.outbound_gaps(seen)
    counts = Counter(b["event_id"] for bodies in seen.values() for b in bodies)
    figures = flow.figures()
    report("relay killed", **figures, published_before_kill=len(published),
           published_not_marked=len(published_not_marked),
           seen_twice=sum(1 for n in counts.values() if n == 2), seen_more=sum(1 for n in counts.values() if n > 2),
           recovery_s=round(recovered_at - killed_at, 1), outbound=outbound)
    assert published_not_marked, "the kill did not land between publishing and marking"
    assert outbound["gaps"] == 0 and outbound["mismatched"] == 0, outbound
    assert all(counts[e] == 2 for e in published_not_marked), {e: counts[e] for e in published_not_marked}
    assert max(counts.values()) <= 2
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["not_as_expected"] == 0, figures
