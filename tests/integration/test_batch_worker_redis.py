"""`matomete batch-worker`'s plumbing on the real Redis and PostgreSQL (workers.batch): messages it
takes are held as kombu holds them, answered as Celery answers, acknowledged only after; a
transient database error keeps the batch; a body that is no task is quarantined, and one with no
delivery tag is held in Redis until it is, whoever quarantines it; a message its worker died with
MAX_DELIVERIES times is quarantined; a message that cannot be quarantined yet stays for the sweep."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from matomete_core.adapters.relay import KombuPublisher
from matomete_core.adapters.tables import charges, quarantine
from matomete_core.testing import signed
from tests.unit.conftest import SECRETS, jst

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(pg_deps, redis_url):  # noqa: ANN001, ANN201
    from workers.batch import BatchWorker

    deps = replace(pg_deps, settings=replace(pg_deps.settings, broker_url=redis_url),
                   publisher=KombuPublisher(redis_url))
    client = Celery("sender", broker=redis_url, backend=redis_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    worker = BatchWorker(size=50, deps_=deps, backend=client.backend)
    yield worker, client, redis.Redis.from_url(redis_url)
    client.close()


def purchase(n: int) -> dict:
    at = jst("2026-08-10 12:00")  # the results are stored with the wall clock; the decision uses now
    return signed({"message_id": f"bw-{n}", "occurred_at": at.isoformat(), "provider_id": "PB",
                   "order_id": f"bw-{n}", "passport_id": "user03", "content_id": "coin", "quantity": 1},
                  SECRETS["PB"])


def send(client: Celery, bodies: list[dict]) -> list:
    return [client.send_task("matomete.purchase", args=[b], queue="provider-events") for b in bodies]


def charged(worker) -> int:  # noqa: ANN001
    with worker.deps.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(charges)).scalar_one()


@pytest.fixture(autouse=True)
def _clock(monkeypatch):  # noqa: ANN001
    """Decide as of the messages' day, as the unit tier does."""
    import workers.batch

    monkeypatch.setattr(workers.batch, "_now", lambda: jst("2026-08-10 12:30"))


def test_taken_messages_are_held_as_kombu_holds_them_until_their_results_are_stored(setup):
    worker, client, r = setup
    results = send(client, [purchase(n) for n in range(5)])
    taken = worker.take()
    assert len(taken) == 5 and r.llen("provider-events") == 0
    assert r.hlen("unacked") == 5 and r.zcard("unacked_index") == 5  # a sweep would restore them
    held = json.loads(r.hget("unacked", taken[0].tag))
    assert held[0]["headers"]["id"] == taken[0].task_id and held[2] == "provider-events"

    worker.process(taken)

    assert [res.get(timeout=5)["status"] for res in results] == ["accepted"] * 5
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    assert charged(worker) == 5


def test_a_transient_database_error_keeps_the_batch_and_retries_it(setup, monkeypatch):
    worker, client, r = setup
    results = send(client, [purchase(n) for n in range(3)])
    from matomete_core.service import batch

    real, calls = batch.decide_batch, []

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(r.hlen("unacked"))
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, Exception("the database is restarting"))
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "decide_batch", flaky)
    monkeypatch.setattr("workers.batch.time.sleep", lambda _s: None)
    progress = []  # a retry is progress: the parent does not take the process for stuck (batch_pool)
    worker.progress = lambda: progress.append(len(calls))
    worker.process(worker.take())
    assert calls == [3, 3]  # held, unacknowledged, through the retry
    assert progress == [1]
    assert [res.get(timeout=5)["status"] for res in results] == ["accepted"] * 3
    assert charged(worker) == 3 and r.hlen("unacked") == 0


def test_outbound_messages_follow_the_results_even_of_a_run_committed_before_a_retry(setup, monkeypatch):
    worker, client, r = setup
    results = send(client, [purchase(n) for n in range(3)])
    from matomete_core.service import batch

    real, attempts, steps = batch.decide_batch, [], []

    def first_run_then_a_restart(deps, messages, **kwargs):  # noqa: ANN001, ANN003, ANN202
        attempts.append(len(messages))
        if len(attempts) == 1:  # the first message's run commits, then the database goes away
            real(deps, messages[:1], **kwargs)
            raise OperationalError("SELECT 1", {}, Exception("the database is restarting"))
        return real(deps, messages, **kwargs)

    monkeypatch.setattr(batch, "decide_batch", first_run_then_a_restart)
    monkeypatch.setattr("workers.batch.time.sleep", lambda _s: None)
    for step in ("finish", "_publish"):
        monkeypatch.setattr(worker, step, lambda rows, step=step, real=getattr(worker, step): (
            steps.append((step, len(rows))), real(rows))[1])
    worker.process(worker.take())

    assert [res.get(timeout=5)["status"] for res in results] == ["accepted"] * 3
    assert steps == [("finish", 3), ("_publish", 6)]  # every committed row, the first run's included
    assert r.llen("billing-records") == 3 and r.llen("provider-results.PB") == 3
    assert charged(worker) == 3


def quarantined(worker) -> list[str]:  # noqa: ANN001
    with worker.deps.engine.connect() as conn:
        return list(conn.execute(select(quarantine.c.reason).order_by(quarantine.c.id)).scalars())


def database_down(*_a, **_k):  # noqa: ANN002, ANN003, ANN201
    raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))


UNDECODABLE = {"body": "W10=", "headers": {"id": "x", "task": "matomete.purchase"},
               "content-type": "application/x-python-serialize",
               "properties": {"delivery_tag": "t-2", "body_encoding": "base64"}}


def test_a_body_that_is_no_task_message_is_quarantined_and_acknowledged(setup):
    worker, _client, r = setup
    r.lpush("provider-events", b"\xff not json")
    r.lpush("provider-events", json.dumps({"body": "W10=", "headers": {"id": "x", "task": "matomete.purchase"},
                                           "content-type": "application/x-python-serialize",
                                           "properties": {"delivery_tag": "t-1", "body_encoding": "base64"}}))
    r.lpush("provider-events", json.dumps({"properties": {"delivery_tag": "t-3"}}))  # tagged, but no headers
    worker.process(worker.take())
    assert quarantined(worker) == ["INVALID_MESSAGE"] * 3
    assert r.hlen("unacked") == 0 and r.llen("provider-events") == 0


def test_a_body_with_no_delivery_tag_is_held_until_quarantined_even_if_its_process_dies(setup):
    from workers.batch import HELD, BatchWorker

    worker, _client, r = setup
    bodies = [b"\xff not json", json.dumps({"properties": {}, "headers": {"task": "matomete.purchase"}}).encode(),
              json.dumps({"properties": {"delivery_tag": {"not": "a string"}}, "headers": {"task": [1]}}).encode()]
    for body in bodies:
        r.lpush("provider-events", body)
    taken = worker.take()  # ... and this process dies before it quarantines them
    assert [t.tag for t in taken] == [None] * 3 and r.llen("provider-events") == 0 and r.hlen("unacked") == 0
    assert sorted(r.lrange(HELD, 0, -1)) == sorted(bodies)

    BatchWorker(size=50, deps_=worker.deps, backend=worker.backend)._sweep()  # any process's next sweep

    assert quarantined(worker) == ["INVALID_MESSAGE"] * 3 and r.llen(HELD) == 0


def test_a_task_message_quarantined_for_want_of_a_delivery_tag_is_kept_without_its_secrets(setup):
    worker, client, r = setup
    send(client, [{**purchase(7), "access_key": "Sup3r-Secret"}])
    envelope = json.loads(r.rpop("provider-events"))
    del envelope["properties"]["delivery_tag"]  # as a hand-written client might send it
    r.lpush("provider-events", json.dumps(envelope))
    worker.process(worker.take())
    assert quarantined(worker) == ["INVALID_MESSAGE"]
    with worker.deps.engine.connect() as conn:
        [kept] = json.loads(conn.execute(select(quarantine.c.message)).scalar_one())[0]
    assert kept["message_id"] == "bw-7" and kept["signature"] == "***" and kept["access_key"] == "***"


def test_a_message_that_cannot_be_quarantined_yet_stays_for_the_sweep_and_the_loop_goes_on(setup, monkeypatch):
    import workers.entries
    from workers.batch import HELD

    worker, _client, r = setup
    r.lpush("provider-events", json.dumps(UNDECODABLE))
    r.lpush("provider-events", b"\xff no tag")
    real = workers.entries.quarantine_message
    monkeypatch.setattr(workers.entries, "quarantine_message", database_down)
    worker.process(worker.take())  # the database is away: nothing raised, nothing lost
    assert quarantined(worker) == [] and r.hlen("unacked") == 1 and r.llen(HELD) == 1

    monkeypatch.setattr(workers.entries, "quarantine_message", real)  # it is back
    worker._sweep()  # the held body
    worker._kombu.default_channel.qos.restore_by_tag("t-2")  # the unacknowledged one, after the timeout
    worker.process(worker.take())
    assert quarantined(worker) == ["INVALID_MESSAGE"] * 2
    assert r.hlen("unacked") == 0 and r.llen(HELD) == 0 and r.llen("provider-events") == 0


def test_a_redelivered_message_whose_quarantine_fails_stays_unacknowledged(setup, monkeypatch):
    from matomete_core.service import bus
    from workers.tasks import MAX_DELIVERIES

    worker, client, r = setup
    send(client, [purchase(2)])
    [taken] = worker.take()
    taken.redelivered = True  # as after a sweep, its worker having died with it each time before
    r.set(f"matomete:deliveries:{taken.task_id}", MAX_DELIVERIES)
    monkeypatch.setattr(bus, "quarantine_failure", database_down)
    worker.process([taken])
    assert r.hlen("unacked") == 1 and charged(worker) == 0 and quarantined(worker) == []


class Died(BaseException):
    """The worker process dies while deciding (killed, out of memory): nothing after runs."""


def test_a_message_its_worker_died_with_five_times_is_quarantined(setup, monkeypatch):
    from matomete_core.service import batch
    from workers.tasks import MAX_DELIVERIES

    def die(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise Died()

    worker, client, r = setup
    monkeypatch.setattr(batch, "decide_batch", die)  # its first delivery kills the worker
    monkeypatch.setattr(worker, "_decide_alone", die)  # and so does every redelivery
    [result] = send(client, [purchase(1)])
    for delivery in range(1 + MAX_DELIVERIES):
        [taken] = worker.take()
        try:
            worker.process([taken])
            break
        except Died:  # the visibility sweep hands it out again, marked redelivered
            worker._kombu.default_channel.qos.restore_by_tag(taken.tag)
    assert delivery == MAX_DELIVERIES  # five redeliveries died; the fifth is quarantined instead
    assert (result.get(timeout=5)["status"], result.get()["reason"]) == ("quarantined", "PROCESSING_FAILED")
    assert charged(worker) == 0 and r.hlen("unacked") == 0


def test_a_redelivered_message_that_was_decided_replays_its_first_decision(setup):
    worker, client, r = setup
    [result] = send(client, [purchase(7)])
    [taken] = worker.take()
    worker.process([taken])
    first = result.get(timeout=5)
    client.send_task("matomete.purchase", args=[purchase(7)], queue="provider-events", task_id=result.id)
    [again] = worker.take()
    again.redelivered = True  # as after a sweep
    worker.process([again])
    assert client.AsyncResult(result.id).get(timeout=5) == {**first, "replayed": True}
    assert charged(worker) == 1
