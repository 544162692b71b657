"""Hostile traffic against a real worker: a poison message, forgeries, bodies Celery cannot decode.
None of it blocks the queue: the ordinary messages sent behind it are all decided.

* A message that crashes its handler every time (injected with wrapped_worker.py ``poison``) is
  retried with backoff, then quarantined PROCESSING_FAILED after its MAX_ATTEMPTS (4) — while the
  worker goes on with the rest of the queue (a retry waits in the worker, not at the queue's head).
  The unit version is tests/unit/test_task_retries.py.
* A cancel by another provider for an order it does not own is held for that provider's own order
  of the same id, and the owner's subscription stays; a message signed with another provider's
  secret is quarantined BAD_SIGNATURE and claims nothing (unit versions:
  tests/unit/test_exactly_once_and_quarantine.py and test_deciding_a_cancel.py).
* A message that is not a Celery task message at all never reaches the bus. A body Celery cannot
  decode (JSON nested deeper than its decoder allows, bytes that are not UTF-8, truncated JSON), and
  one that decodes but is not ``[args, kwargs, embed]`` or has no ``id`` header (which used to stop
  the worker, "Unrecoverable error", and redelivered every worker after it: workers/requests.py),
  is quarantined INVALID_MESSAGE by the worker's consumer instead of Celery's log-and-drop
  (workers/consumer.py). The worker carries on.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.faults.flow import Flow
from tests.faults.harness import (
    PROVIDER_SECRETS,
    Deployment,
    occurred_at,
    report,
    sign,
    wait_until,
)

pytestmark = pytest.mark.faults

WRAPPER = str(Path(__file__).with_name("wrapped_worker.py"))
MALFORMED = {  # name: (body, headers left out)
    "nested 10,000 deep": (b"[[" + b"[" * 10_000 + b"]" * 10_000 + b"], {}, {}]", ()),
    "not UTF-8": (b'[[{"message_id": "\xff\xfe"}], {}, {}]', ()),
    "truncated JSON": (b'[[{"message_id": ', ()),
    "an object, not the protocol's triple": (b'{"message_id": "m"}', ()),
    "a bare string": (b'"hello"', ()),
    "a number": (b"42", ()),
    "args not an array": (b'[1, {}, {}]', ()),
    "no id header": (b'[[{"message_id": "m"}], {}, {}]', ("id",)),
}


def test_a_poison_message_and_forgeries_never_block_the_queue_behind_them(deployment):
    # given a worker in which one kind of purchase always crashes its handler
    d: Deployment = deployment()
    d.start_worker("w1", concurrency=1, argv=[sys.executable, WRAPPER], env={"MATOMETE_FAULTS_INJECT": "poison"})
    at = occurred_at(2)

    # when the poison message, a foreign cancel, a forgery and undecodable bodies arrive first
    poison = sign({"message_id": "poison-1", "occurred_at": at, "provider_id": "PB", "order_id": "poison-1",
                   "passport_id": "f1u1", "content_id": "coin", "quantity": 1})
    owned = sign({"message_id": "pa-own-1", "occurred_at": at, "provider_id": "PA", "order_id": "shared-1",
                  "passport_id": "f2u2", "content_id": "pack", "quantity": 1})
    foreign_cancel = sign({"message_id": "pb-cancel-1", "occurred_at": at, "provider_id": "PB",
                           "order_id": "shared-1"})
    forged = sign({"message_id": "forged-1", "occurred_at": at, "provider_id": "PA", "order_id": "forged-1",
                   "passport_id": "f3u3", "content_id": "pack", "quantity": 1}, secret=PROVIDER_SECRETS["PB"])
    started = time.monotonic()
    d.send("matomete.purchase", "provider-events", owned)
    d.send("matomete.purchase", "provider-events", poison)
    for body, dropped in MALFORMED.values():
        d.publish_raw("provider-events", body, drop_headers=dropped)
    d.send("matomete.cancel", "provider-events", foreign_cancel)
    d.send("matomete.purchase", "provider-events", forged)
    # and 40 ordinary messages behind them
    flow = Flow(d, "behind").build(40, first_passport=100)
    flow.send_all()

    # then the ordinary messages are all decided, and the poison ends in the quarantine
    flow.wait_decided(timeout=120)
    behind_done = time.monotonic()
    wait_until(lambda: d.sql("SELECT count(*) FROM quarantine WHERE reason = 'PROCESSING_FAILED'")[0][0] == 1,
               timeout=90, message="the poison message to be quarantined")
    quarantined_at = time.monotonic()
    quarantine = {(r, m) for r, m in d.sql("SELECT reason, message_id FROM quarantine")}
    inbox = dict(d.sql("SELECT message_id, decision->>'status' FROM inbox "
                       "WHERE message_id IN ('pa-own-1', 'pb-cancel-1', 'forged-1', 'poison-1')"))
    owned_row = d.sql("SELECT cancelled_at FROM purchases WHERE provider_id = 'PA' AND order_id = 'shared-1'")
    log = "\n".join(p.read_text(errors="replace") for p in d.logs.values())
    malformed_kept = d.sql("SELECT count(*) FROM quarantine WHERE reason = 'INVALID_MESSAGE'")[0][0]
    figures = flow.figures()
    report("poison message and forgeries", **figures, poison_attempts=log.count("handling failed (attempt") + 1,
           poison_quarantined_s=round(quarantined_at - started, 1), behind_decided_s=round(behind_done - started, 1),
           malformed_sent=len(MALFORMED), malformed_quarantined=malformed_kept,
           worker_stopped=d.processes["w1"].poll() is not None,
           foreign_cancel=inbox.get("pb-cancel-1"), forged=sorted(r for r, m in quarantine if m == "forged-1"))
    assert ("PROCESSING_FAILED", "poison-1") in quarantine and "poison-1" not in inbox
    assert ("BAD_SIGNATURE", "forged-1") in quarantine and "forged-1" not in inbox
    assert inbox["pa-own-1"] == "accepted" and owned_row == [(None,)]      # PA's order stands
    assert inbox["pb-cancel-1"] == "held"                                   # waiting for PB's own shared-1
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["not_as_expected"] == 0, figures
    assert d.processes["w1"].poll() is None and "Unrecoverable error" not in log
    assert malformed_kept == len(MALFORMED)  # each kept for an operator, none dropped


NOT_KOMBU = {  # Redis list entries no kombu client writes: name: the entry
    "not JSON": b"this is not json",
    "not UTF-8": b"\xff\xfe not json",
    "JSON, no envelope": b"{}",
    "a number": b"42",
    "a tag that is no string": b'{"properties": {"delivery_tag": {"a": 1}}, "body": "e30="}',
}


def test_queue_entries_that_are_no_kombu_messages_are_set_aside_and_the_worker_carries_on(deployment):
    """Each of these made kombu raise as it read the queue: "Unrecoverable error", and the worker
    stopped. Now each is quarantined INVALID_MESSAGE, the consumer reconnects, and the messages
    around them are decided (workers/consumer.py)."""
    import redis

    # given a worker, and ordinary messages queued around entries that are no kombu messages
    d: Deployment = deployment()
    d.start_worker("w1", concurrency=1)
    flow = Flow(d, "around").build(24, first_passport=200)
    entries = list(NOT_KOMBU.values())
    with redis.Redis.from_url(d.broker_url) as r:
        flow.send_all(on_each=lambda i: r.lpush("provider-events", entries[i // 4]) if i % 4 == 3 and i // 4 < len(
            entries) else None)

    # then every ordinary message is decided, each entry is kept for an operator, and the worker lives
    flow.wait_decided(timeout=120)
    wait_until(lambda: d.sql("SELECT count(*) FROM quarantine WHERE reason = 'INVALID_MESSAGE'")[0][0]
               == len(NOT_KOMBU), timeout=30, message="every entry to be quarantined")
    log = "\n".join(p.read_text(errors="replace") for p in d.logs.values())
    figures = flow.figures()
    report("queue entries that are no kombu messages", **figures, entries=len(NOT_KOMBU),
           reconnects=log.count("no kombu message"), worker_stopped=d.processes["w1"].poll() is not None)
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["not_as_expected"] == 0, figures
    assert d.processes["w1"].poll() is None and "Unrecoverable error" not in log
