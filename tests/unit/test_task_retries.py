"""Transient database errors are retried with backoff and never become a decision; a message whose
handling keeps failing for another reason is quarantined after a few attempts, never dropped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from matomete_core.service import bus
from workers import tasks


class Retry(Exception):
    pass


class FakeTask:
    name = "matomete.purchase"

    def __init__(self, retries: int):
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict] = []

    def retry(self, **kwargs):  # noqa: ANN003, ANN201
        self.retried.append(kwargs)
        return Retry()


@pytest.fixture
def failing(deps, monkeypatch):
    monkeypatch.setattr(tasks, "deps", lambda: deps)

    def fail_with(exc: Exception) -> None:
        def boom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
            raise exc
        monkeypatch.setattr(bus, "handle", boom)
    return fail_with


def test_a_database_outage_is_retried_with_backoff_and_never_decided(failing):
    failing(OperationalError("SELECT 1", {}, Exception("connection refused")))
    for attempt, expected in ((0, 1), (3, 8), (10, tasks.MAX_BACKOFF_S)):
        task = FakeTask(retries=attempt)
        with pytest.raises(Retry):
            tasks.decide(task, ({"message_id": "m"},), {})
        assert task.retried[0]["countdown"] == expected and task.retried[0]["max_retries"] is None


def test_a_message_whose_handling_keeps_failing_is_quarantined_not_dropped(failing, deps):
    failing(RuntimeError("a bug"))
    with pytest.raises(Retry):
        tasks.decide(FakeTask(retries=0), ({"message_id": "m-1"},), {})
    decision = tasks.decide(FakeTask(retries=tasks.MAX_ATTEMPTS - 1), ({"message_id": "m-1"},), {})
    assert (decision["status"], decision["reason"], decision["message_id"]) == ("quarantined", "PROCESSING_FAILED", "m-1")
    from matomete_core.service.quarantine import list_quarantined
    assert [q["reason"] for q in list_quarantined(deps.engine)] == ["PROCESSING_FAILED"]


def test_a_message_whose_quarantine_fails_too_is_retried_not_acknowledged(failing, monkeypatch):
    failing(RuntimeError("a bug"))

    def database_gone(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OperationalError("INSERT INTO quarantine", {}, Exception("connection refused"))
    monkeypatch.setattr(bus, "quarantine_failure", database_gone)
    task = FakeTask(retries=tasks.MAX_ATTEMPTS - 1)
    with pytest.raises(Retry):
        tasks.decide(task, ({"message_id": "m-2"},), {})
    assert task.retried[0]["countdown"] == tasks.MAX_BACKOFF_S and task.retried[0]["max_retries"] is None


def test_the_worker_acknowledges_late_and_requeues_when_a_worker_process_dies():
    from workers.app import VISIBILITY_TIMEOUT_S, app
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    purchase = app.tasks["matomete.purchase"]  # and when the hard time limit kills it (the fault test:
    assert purchase.reject_on_worker_lost and purchase.acks_on_timeout is False  # test_hard_time_limit)
    assert conf.task_time_limit < VISIBILITY_TIMEOUT_S
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert conf.timezone == "Asia/Tokyo"


def test_a_message_that_kills_its_worker_every_time_is_quarantined_after_max_deliveries(deps, monkeypatch, redis_url):
    import redis as redis_lib
    monkeypatch.setattr(tasks, "deps", lambda: deps)
    monkeypatch.setattr(tasks, "_broker_redis", lambda: redis_lib.Redis.from_url(redis_url))
    task = FakeTask(retries=0)
    task.request.id, task.request.delivery_info = "t-1", {"redelivered": True}
    message = {"message_id": "kills-its-worker"}
    for _ in range(tasks.MAX_DELIVERIES - 1):  # each time the handler runs (and, in life, dies)
        decision = tasks.decide(task, (message,), {})
        assert decision["reason"] == "INVALID_MESSAGE"
    decision = tasks.decide(task, (message,), {})
    assert (decision["status"], decision["reason"]) == ("quarantined", "PROCESSING_FAILED")
    from matomete_core.service.quarantine import list_quarantined
    assert any("WorkerLostEachTime" in q["detail"] for q in list_quarantined(deps.engine))


def test_a_first_delivery_is_not_counted(monkeypatch):
    monkeypatch.setattr(tasks, "_broker_redis", lambda: pytest.fail("no Redis round trip on a first delivery"))
    task = FakeTask(retries=0)
    task.request.id, task.request.delivery_info = "t-2", {}
    assert tasks.deliveries(task) == 0
