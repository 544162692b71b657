"""A batch process of `matomete batch-worker` that fails (workers.batch_pool): it says why in a log
line and exits non-zero, so that its parent starts another (tests/e2e/test_batch_worker.py kills
one and watches it replaced)."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import redis

import workers.batch
import workers.batch_pool as pool
from workers import logging as json_logs


def test_a_batch_process_that_fails_logs_why_and_exits_non_zero_to_be_replaced(monkeypatch, caplog):
    class LostBroker:
        def __init__(self, size: int, progress):  # noqa: ANN001
            self.size, self.progress = size, progress

        def run(self) -> None:
            self.progress()
            raise redis.ConnectionError("the broker is gone")

    monkeypatch.setattr(workers.batch, "BatchWorker", LostBroker)
    monkeypatch.setattr(pool, "set_pdeathsig", lambda _sig: None)  # not on the test process
    monkeypatch.setattr(json_logs, "use_json", lambda _logger: None)  # nor on pytest's log handlers
    progress = multiprocessing.get_context("spawn").Value("d", 0.0, lock=False)
    with pytest.raises(SystemExit) as exited:
        pool._decide(50, "INFO", os.getppid(), progress)
    assert exited.value.code == 1
    assert progress.value > 0  # what the parent reads to tell a stuck process
    assert "batch process failed" in caplog.text and "the broker is gone" in caplog.text
