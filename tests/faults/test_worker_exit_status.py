"""A worker that stops for good says so in its exit status, so that a supervisor restarting failed
processes only (systemd's ``Restart=on-failure``) starts it again; one shut down as asked exits 0.

Celery's ``app.worker_main`` dropped the status: after an "Unrecoverable error" (an error in the
consumer's event loop that is no connection error, as kombu's on a lost connection was, see
workers/consumer.py) `matomete worker` stopped and exited 0."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.faults.harness import Deployment

pytestmark = pytest.mark.faults

WRAPPER = str(Path(__file__).with_name("wrapped_worker.py"))


def test_a_worker_whose_consumer_fails_for_good_exits_with_a_failure_status(deployment):
    # given a worker whose consumer's event loop meets an error 3 s after it starts
    d: Deployment = deployment()
    proc = d.start_worker("w1", argv=[sys.executable, WRAPPER], env={"MATOMETE_FAULTS_INJECT": "consumer-error:3"},
                          wait=False)
    # then it stops, and its exit status says it failed
    assert proc.wait(timeout=90) != 0
    assert "Unrecoverable error" in d.logs["w1"].read_text(encoding="utf-8")


def test_a_worker_shut_down_as_asked_exits_0(deployment):
    d: Deployment = deployment()
    proc = d.start_worker("w1")
    proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    assert proc.wait(timeout=60) == 0
