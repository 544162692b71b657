"""The provider path again, decided by `matomete batch-worker` (micro-batches) instead of a task
per message: the same contract — the decision as the task's result, on `provider-results`, the
charges on `billing-records`, the CLI's views — from a bare Celery client and from a raw LPUSH.
Then its processes: one killed is replaced, and so is one stuck past the time limit; killed with
their parent, what they held is decided once after it comes back; SIGTERM stops them all. Nothing here imports matomete."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg
import pytest
import redis

from tests.e2e.conftest import _start, deployment
from tests.support.services import wait_until
from tests.e2e.test_provider_path import *  # noqa: F401,F403 — the same specifications
from tests.e2e.test_provider_path import purchase_message
from tests.e2e.test_raw_protocol import *  # noqa: F401,F403
# the parent serves the decisions counted in every batch process
from tests.e2e.test_metrics import (  # noqa: F401
    test_the_worker_serves_the_decisions_of_all_its_pool_processes_and_the_database_and_broker_gauges)

pytestmark = pytest.mark.e2e


VISIBILITY_TIMEOUT_S = 12  # so that a killed worker's messages come back within the test
KILL_LINE, KILL_PASSPORT = "CAF0000077701", "kill01"


@pytest.fixture(scope="module")
def system(tmp_path_factory):  # noqa: ANN001, ANN201
    with deployment(tmp_path_factory, mode="batch",
                    env={"MATOMETE_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S)}) as running:
        running.load_line(KILL_LINE, access_key="e2e-key-77701", billing_account="06-7770-7701",
                          passport_ids=[KILL_PASSPORT], line_limit=50000)
        yield running


def test_a_batch_worker_killed_with_messages_in_hand_decides_each_once_after_they_come_back(system):
    # given: a stream of purchases on a batch worker that is SIGKILLed while it works through them —
    # while another transaction holds their line, so that its batches are in hand when it dies (a
    # batch worker that keeps up with the sender would otherwise hold none at the moment it dies)
    messages = [purchase_message(system, provider_id="PB", passport_id=KILL_PASSPORT, content_id="coin")
                for _ in range(300)]
    broker = redis.Redis.from_url(system.env["MATOMETE_BROKER_URL"])
    with psycopg.connect(system.env["MATOMETE_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")) as db:
        db.execute("SELECT 1 FROM lines WHERE customer_id = %s FOR UPDATE", (KILL_LINE,))
        results = [system.client.send_task("matomete.purchase", args=[m], queue="provider-events") for m in messages]
        wait_until(lambda: broker.hlen("unacked") > 0, timeout=10, interval=0.001, message="a batch in hand")
        batch_processes = deciding(system.processes["batch-worker"].pid)
        system.processes["batch-worker"].send_signal(signal.SIGKILL)
        system.processes["batch-worker"].wait(10)
        wait_until(lambda: not any(alive(pid) for pid in batch_processes), timeout=10,
                   message="its batch processes to die with it")
        in_hand = broker.hlen("unacked")
        assert in_hand > 0  # it died holding unacknowledged messages
    # (the line is free again: the dead processes' transactions, still waiting for it, roll back)
    # when: it is started again (its visibility sweep hands back what the dead one held)
    _start(system, "batch-worker", "batch-worker", "--loglevel=INFO", "--size=50", "--concurrency=2")
    decisions = [r.get(timeout=VISIBILITY_TIMEOUT_S + 60) for r in results]
    # then: every message has its decision — all accepted, 300 × 100 yen is within the limits —
    # and each is charged once
    assert {d["message_id"] for d in decisions} == {m["message_id"] for m in messages}
    assert {d["status"] for d in decisions} == {"accepted"}
    assert len({d["application_number"] for d in decisions}) == len(messages)
    statement = system.cli_json("statement", KILL_LINE, system.month_of(messages[0]["occurred_at"]))
    assert (statement["total_count"], statement["total_amount"]) == (len(messages), 100 * len(messages))


def deciding(parent: int) -> list[int]:
    """The batch processes of a `matomete batch-worker` (spawned children; not its resource tracker)."""
    def spawned(pid: str) -> bool:
        try:
            return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:  # gone meanwhile
            return False
    return [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split() if spawned(pid)]


def alive(pid: int) -> bool:
    try:  # a zombie nobody reaps is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_batch_process_that_is_killed_is_replaced_and_the_worker_decides_on(system):
    # given: the batch worker's two processes
    parent = system.processes["batch-worker"].pid
    before = wait_until(lambda: len(deciding(parent)) == 2 and deciding(parent), timeout=30,
                        message="two batch processes")
    # when: one is killed
    os.kill(before[0], signal.SIGKILL)
    # then: another takes its place, and purchases are decided
    wait_until(lambda: len(set(deciding(parent)) - {before[0]}) == 2, timeout=30,
               message="a new batch process in place of the killed one")
    message = purchase_message(system, provider_id="PB", passport_id=KILL_PASSPORT, content_id="coin")
    result = system.client.send_task("matomete.purchase", args=[message], queue="provider-events")
    assert result.get(timeout=30)["status"] == "accepted"
    assert "exited with -9; starting another" in system.logs["batch-worker"].read_text()


def test_a_batch_process_stuck_past_the_time_limit_is_killed_and_replaced(system):
    # given: the batch worker's two processes, and the time limit of a task (⅔ of the visibility
    # timeout: 8 s here)
    parent = system.processes["batch-worker"].pid
    before = wait_until(lambda: len(deciding(parent)) == 2 and deciding(parent), timeout=30,
                        message="two batch processes")
    # when: one stops making progress (frozen, as if stuck in a call that never returns)
    os.kill(before[0], signal.SIGSTOP)
    # then: the parent kills it after the time limit and starts another, and purchases are decided
    wait_until(lambda: not alive(before[0]), timeout=VISIBILITY_TIMEOUT_S * 2 // 3 + 10,
               message="the stuck process to be killed")
    wait_until(lambda: len(set(deciding(parent)) - {before[0]}) == 2, timeout=30,
               message="a new batch process in place of the stuck one")
    message = purchase_message(system, provider_id="PB", passport_id=KILL_PASSPORT, content_id="coin")
    result = system.client.send_task("matomete.purchase", args=[message], queue="provider-events")
    assert result.get(timeout=30)["status"] == "accepted"
    assert f"batch process {before[0]} made no progress" in system.logs["batch-worker"].read_text()


def test_sigterm_stops_a_batch_worker_and_all_its_processes(system):
    # given: a second batch worker beside the first
    proc = _start(system, "batch-worker-2", "batch-worker", "--loglevel=INFO", "--concurrency=2")
    processes = wait_until(lambda: len(deciding(proc.pid)) == 2 and deciding(proc.pid), timeout=30,
                           message="two batch processes")
    # when: it is told to stop, then it and its processes exit, cleanly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not any(alive(pid) for pid in processes)
