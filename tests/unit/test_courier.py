"""A pool process's committed outbound messages are published in the background, many decisions'
at a time, and none is left behind: not the last of a burst, not one whose publishing failed (it
stays in the outbox for the relay), not what waits when the process shuts down (workers.outbound)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from sqlalchemy import select

from matomete_core.adapters.relay import relay
from matomete_core.adapters.tables import outbox
from matomete_core.service.outbox import Written
from tests.support.services import wait_until
from tests.unit.conftest import jst
from workers import tasks
from workers.outbound import Courier

AT = jst("2026-08-10 12:00")


def rows(*names: str) -> list[Written]:
    return [Written(name, "billing-records", "{}") for name in names]


class Recorder:
    def __init__(self, fail_first: int = 0):
        self.batches: list[list[str]] = []
        self.fail_first = fail_first
        self.calls = 0

    def __call__(self, batch: list[Written]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("Redis is away")
        self.batches.append([w.event_id for w in batch])

    def published(self) -> list[str]:
        return [e for b in self.batches for e in b]


def test_the_rows_of_decisions_close_together_go_out_in_one_publish_in_their_order():
    publish = Recorder()
    courier = Courier(publish, linger=0.5)
    courier.put(rows("a1", "a2"))
    courier.put(rows("b1", "b2"))
    courier.put(rows("c1", "c2"))
    wait_until(lambda: publish.batches, timeout=10, interval=0.01)
    assert publish.batches == [["a1", "a2", "b1", "b2", "c1", "c2"]]
    courier.close(timeout=5)


def test_the_last_rows_of_a_burst_go_out_without_waiting_for_another_decision():
    publish = Recorder()
    courier = Courier(publish, linger=0.01)
    courier.put(rows("a1"))
    wait_until(lambda: publish.batches, timeout=10, interval=0.01)
    courier.put(rows("b1"))
    wait_until(lambda: len(publish.batches) == 2, timeout=10, interval=0.01)
    assert publish.batches == [["a1"], ["b1"]]
    courier.close(timeout=5)


def test_a_backlog_goes_out_max_rows_at_a_time():
    publish, publishing, gate = Recorder(), threading.Event(), threading.Event()

    def slow(batch: list[Written]) -> None:
        publishing.set()
        gate.wait(10)
        publish(batch)

    courier = Courier(slow, linger=0.01, max_rows=4)
    courier.put(rows("first"))
    wait_until(publishing.is_set, timeout=10, interval=0.01)  # the thread holds it, at the gate
    for n in range(5):
        courier.put(rows(f"{n}a", f"{n}b"))
    gate.set()
    wait_until(lambda: len(publish.published()) == 11, timeout=10, interval=0.01)
    assert publish.batches == [["first"], ["0a", "0b", "1a", "1b"], ["2a", "2b", "3a", "3b"], ["4a", "4b"]]
    courier.close(timeout=5)


def test_a_publish_that_fails_is_left_to_the_relay_and_the_courier_goes_on():
    publish = Recorder(fail_first=1)
    courier = Courier(publish, linger=0.01)
    courier.put(rows("lost-here"))
    wait_until(lambda: publish.calls == 1, timeout=10, interval=0.01)
    courier.put(rows("next"))
    wait_until(lambda: publish.batches, timeout=10, interval=0.01)
    assert publish.batches == [["next"]]
    courier.close(timeout=5)


def test_closing_publishes_what_waits_at_once():
    publish = Recorder()
    courier = Courier(publish, linger=3600)
    courier.put(rows("a1"))
    courier.put(rows("b1"))
    courier.close(timeout=10)
    assert publish.batches == [["a1", "b1"]]


def test_a_task_hands_its_committed_rows_to_the_courier_which_publishes_and_marks_them(
        deps, provider, monkeypatch):
    # given: the task as a pool process runs it
    monkeypatch.setattr(tasks, "deps", lambda: deps)
    tasks.close_courier()
    message = provider.message("PB", AT, order_id="o-1", passport_id="user02", content_id="coin")
    # when
    decision = tasks.decide(SimpleNamespace(name="matomete.purchase", request=SimpleNamespace(retries=0)),
                            (message,), {})
    tasks.close_courier()  # as the process shuts down: what it holds goes out now
    # then: the provider's result and the charge went out, each once, and are marked published
    assert decision["status"] == "accepted"
    [result] = deps.publisher.bodies("provider-results.PB")
    assert result["message_id"] == message["message_id"]
    [record] = deps.publisher.bodies("billing-records")
    assert record["application_number"] == decision["application_number"]
    with deps.engine.connect() as conn:
        assert conn.execute(select(outbox.c.event_id).where(outbox.c.published_at.is_(None))).all() == []


def test_rows_a_courier_never_published_wait_in_the_outbox_for_the_relay(deps, provider, monkeypatch):
    # given a pool process that dies with the rows in its courier (here: a courier that drops them)
    monkeypatch.setattr(tasks, "deps", lambda: deps)
    dying = Courier(lambda rows: None)
    monkeypatch.setattr(tasks, "courier", lambda: dying)
    message = provider.message("PB", AT, order_id="o-2", passport_id="user02", content_id="coin")
    decision = tasks.decide(SimpleNamespace(name="matomete.purchase", request=SimpleNamespace(retries=0)),
                            (message,), {})
    dying.close(timeout=5)
    assert deps.publisher.published == []
    # when the beat relay runs
    relay(deps.engine, deps.publisher, now=AT)
    # then the decision's messages go out, each once
    [result] = deps.publisher.bodies("provider-results.PB")
    assert result["message_id"] == message["message_id"]
    [record] = deps.publisher.bodies("billing-records")
    assert record["application_number"] == decision["application_number"]
