"""Redis restarted in the middle of a stream, on the dedicated server of this session.

What the system guarantees about the broker (see also README, "Faults"):

* The inbox is the record; a broker message is only the wake-up. A decision's inbox row is written
  in the same transaction as its effects and outbound events, so a message received but not
  finished leaves nothing behind in the database — there is nothing there for a sweeper to find.
  Re-driving unfinished work is the broker's part: a message a worker took stays in Redis'
  ``unacked`` hash until acknowledged, and kombu's sweep hands it out again after the visibility
  timeout (workers/app.py). Outbound events are re-driven from the database: the outbox relay
  (after each decision, and from beat every 10 s) publishes whatever is unpublished.
* A queued message exists only in Redis. Redis must therefore run with an append-only file
  (docker-compose.yml does: ``appendonly yes``, ``noeviction``); a restart then keeps every queued
  and every unacknowledged message. With the default ``appendfsync everysec`` a crash of the
  machine may lose up to the last second of writes; a restart (SIGTERM, as under ``docker
  restart``) loses none. A Redis without persistence loses its whole queue on restart.
* Senders re-send a message when they get no result (a publish that fails, or no decision within
  their timeout) — with the same ``message_id``, so a copy that did arrive is replayed, not decided
  twice. This test's sender does exactly that while Redis is down.

Workers, beat and the relay's kombu connections reconnect by themselves.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import redis

from tests.faults.flow import Flow
from tests.faults.harness import Deployment, occurred_at, passport_id, report, sign, wait_until

pytestmark = pytest.mark.faults

VISIBILITY_S = 12
DOWN_S = 3
SLOW_S = 5
WRAPPER = str(Path(__file__).with_name("wrapped_worker.py"))


def waiting(d: Deployment) -> tuple[int, int]:
    with redis.Redis.from_url(d.broker_url) as r:
        return r.llen("provider-events"), r.hlen("unacked")


@pytest.mark.parametrize("mode", ["worker", "batch-worker"])
def test_redis_restarted_mid_stream_keeps_its_queue_and_everything_is_decided_once(deployment, dedicated_redis,
                                                                                   mode):
    # given a worker (or a batch worker of two processes) and beat, and 240 provider messages sent
    # faster than they are decided
    d: Deployment = deployment(MATOMETE_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    if mode == "worker":
        d.start_worker("w1")
    else:  # one message a batch, so that it too falls behind the sender and leaves a backlog
        d.start_batch_worker("w1", concurrency=1, size=1)
    beat = d.start("beat", [d.matomete, "beat", "--loglevel=INFO", "-s", str(d.workdir / "beat-schedule")])
    flow = Flow(d, "redis").build(240).start(pace=0.002)
    wait_until(lambda: waiting(d)[0] >= 40 and flow.decided() >= 10, timeout=60,
               message="a backlog on provider-events")

    # when Redis is restarted (SIGTERM, down 3 s, started again on its append-only file)
    decided_before = flow.decided()
    in_inbox_before = len(flow.decisions())  # read before the queue: the worker goes on meanwhile
    queued_before = waiting(d)
    down_at = time.monotonic()
    dedicated_redis.stop()
    time.sleep(DOWN_S)
    dedicated_redis.start()
    up_at = time.monotonic()
    queued_after = waiting(d)  # read in the order a message moves: queue, then unacked, then inbox
    taken_meanwhile = len(flow.decisions()) - in_inbox_before
    flow.join()

    # then every message is decided, the queued ones included
    done_at = flow.wait_decided(timeout=VISIBILITY_S + 120)
    # and the relay (after decisions, and beat's) publishes everything without being asked
    wait_until(lambda: d.sql("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0,
               timeout=60, message="the outbox to be relayed by the system itself")
    outbound = flow.outbound_gaps(d.drain_outbound())
    figures = flow.figures()
    report(f"redis restarted under a {mode}", **figures, decided_before_restart=decided_before,
           queued_and_unacked_before=list(queued_before), queued_and_unacked_after=list(queued_after),
           taken_into_inbox_meanwhile=taken_meanwhile,
           down_s=round(up_at - down_at, 1), recovery_s=round(done_at - up_at, 1), outbound=outbound)
    # the backlog survived: each message queued before is still queued, taken (unacked), or in the inbox
    assert sum(queued_after) + taken_meanwhile >= queued_before[0], (queued_before, queued_after, taken_meanwhile)
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["not_as_expected"] == 0 and figures["quarantined"] == {}, figures
    assert outbound["gaps"] == 0 and outbound["mismatched"] == 0, outbound
    assert beat.poll() is None and d.processes["w1"].poll() is None  # both rode it out
    if mode == "batch-worker":  # and so did its processes: none had to be replaced
        assert "starting another" not in d.logs["w1"].read_text()


def test_a_worker_whose_acks_failed_while_redis_was_down_consumes_again_when_it_is_back(deployment, dedicated_redis):
    """Every pool process busy when Redis goes down, and their decisions commit while it is away:
    storing their results and acknowledging their messages fail. Nothing is lost or doubled, and
    the worker consumes again when Redis is back. (A failed ack reconnects the consumer, see
    workers/requests.py and tests/unit/test_failed_acks_reconnect.py: kombu keeps a failed ack's
    prefetch credit, and a consumer left without credit on a dead connection never read again.)"""
    # given a worker whose two pool processes are both deciding a slow purchase
    d: Deployment = deployment(MATOMETE_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    d.start_worker("w1", concurrency=2, argv=[sys.executable, WRAPPER],
                   env={"MATOMETE_FAULTS_INJECT": f"slow:{SLOW_S}"})
    at = occurred_at(2)
    slow = [sign({"message_id": f"slow-{i}", "occurred_at": at, "provider_id": "PB", "order_id": f"slow-{i}",
                  "passport_id": passport_id(i), "content_id": "coin", "quantity": 1}) for i in range(2)]
    for body in slow:
        d.send("matomete.purchase", "provider-events", body)
    wait_until(lambda: waiting(d) == (0, 2), timeout=30, message="both slow purchases taken")
    time.sleep(2)  # longer than kombu's BRPOP timeout (1 s): the consumer stops reading its connection

    # when Redis goes down while they run, and stays down until they have finished
    dedicated_redis.stop()
    wait_until(lambda: len(d.sql("SELECT 1 FROM inbox WHERE message_id LIKE 'slow-%%'")) == 2,
               timeout=60, message="the slow purchases to commit")
    time.sleep(8)  # their results and acks are tried, and fail
    dedicated_redis.start()
    up_at = time.monotonic()

    # then the worker takes and decides what is sent next
    flow = Flow(d, "after").build(10, first_passport=100)
    flow.send_all()
    done_at = flow.wait_decided(timeout=60)
    # and the two whose acks failed come back after the visibility timeout: replayed, not doubled
    wait_until(lambda: waiting(d) == (0, 0), timeout=VISIBILITY_S + 30, message="the unacknowledged to be redelivered")
    charges = d.sql("SELECT count(*) FROM charges c JOIN purchases p ON p.application_number = c.application_number "
                    "WHERE p.order_id LIKE 'slow-%%'")[0][0]
    report("acks failed while redis was down", sent=12, decided=flow.decided() + 2, lost=0,
           doubled=charges - 2, recovery_s=round(done_at - up_at, 1))
    assert charges == 2
    assert d.processes["w1"].poll() is None
