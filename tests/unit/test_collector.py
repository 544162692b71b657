"""A worker process freezes what start-up built and collects young garbage in larger steps
(workers.collector): the batch worker before its loop, `matomete worker`'s main process once ready
and each pool process once forked."""

from __future__ import annotations

import gc

import pytest
from celery.signals import worker_process_init, worker_ready

from workers import collector


@pytest.fixture
def collector_state():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_freezes_what_is_alive_and_widens_the_young_generation(collector_state):
    gc.unfreeze()
    built_at_start_up = [{"row": n} for n in range(1000)]
    collector.settle()
    assert gc.get_freeze_count() >= len(built_at_start_up)
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD


@pytest.mark.parametrize("signal", [worker_ready, worker_process_init], ids=["main process", "pool process"])
def test_a_celery_worker_process_settles_once_started(collector_state, signal):
    from workers import tasks  # connects its handlers, as the worker's import of its tasks does

    # connected (strongly) to the signal; called here alone, not by sending the signal, which
    # could start other handlers in this process (the metrics server)
    assert tasks.settle_collector in [receiver for _, receiver in signal.receivers]
    gc.unfreeze()
    gc.set_threshold(700)
    tasks.settle_collector(sender="w1@test")
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD


def test_the_batch_worker_settles_before_its_loop(collector_state, monkeypatch):
    from workers.batch import BatchWorker

    settled = []
    monkeypatch.setattr(collector, "settle", lambda: settled.append(True))
    monkeypatch.setattr("workers.batch.signal.signal", lambda *_: None)  # keep pytest's own handlers
    worker = BatchWorker.__new__(BatchWorker)  # the loop alone: no connections
    worker.size, worker.stopping = 1, True
    worker._kombu = type("K", (), {"release": lambda self: None})()
    worker.run()
    assert settled == [True]
