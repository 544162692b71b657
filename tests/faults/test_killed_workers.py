"""Workers killed while messages flow: a pool process SIGKILLed in the middle of a task, then a whole
worker (main process and pool) SIGKILLed and restarted. Every message is still decided once and
each charge exists once.

How the work comes back (Celery 5.7, kombu 5.7, Redis; see workers/app.py):
* a killed pool process: the worker rejects the task's message with requeue (reject_on_worker_lost);
  kombu pushes it back at the end of its queue, so it is taken again after the backlog before it;
* a killed worker: its unacknowledged messages wait in Redis' ``unacked`` hash until a consuming
  worker's sweep (``restore_visible``) finds them older than the visibility timeout V. The sweep runs
  when a worker starts and then every ``unacked_restore_interval`` seconds (the app sets the throttle
  to 1; kombu's own defaults would sweep only every 100 s). With the defaults — V = 90 s, a sweep
  every 5 s — in-flight work is back within 95 s, under 2 minutes; this test sets V = 12 s
  (MATOMETE_VISIBILITY_TIMEOUT), so it is back in about 13 s.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time

import pytest
import redis

from tests.faults.flow import Flow
from tests.faults.harness import Deployment, report, wait_until
from tests.faults.servers import children_of

pytestmark = pytest.mark.faults

# MATOMETE_FAULTS_VISIBILITY_TIMEOUT=90 runs it with the production default (about 2 minutes longer)
VISIBILITY_S = int(os.environ.get("MATOMETE_FAULTS_VISIBILITY_TIMEOUT", "12"))


def caught_running(d: Deployment, worker: str, attempts: int = 40) -> tuple[list[int], dict[int, dict]]:
    """Stop (SIGSTOP) ``worker``'s pool processes at a moment one of them runs a task, so it cannot
    finish it while we act; returns the stopped pool and the running tasks by pool process.
    The caller kills what it wants and lets the rest go (``let_go``)."""
    main = d.processes[worker].pid
    node = f"{worker}@faults"
    inspect = d.client.control.inspect(destination=[node], timeout=2, limit=1)
    for _ in range(attempts):
        pool = children_of(main)
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)
        active = (inspect.active() or {}).get(node, [])
        busy = {t.get("worker_pid"): t for t in active if t.get("worker_pid") in pool}
        if busy:
            return pool, busy
        let_go(pool)
        time.sleep(0.1)
    raise AssertionError(f"no task of {worker} was ever caught running")


def let_go(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def kill_a_pool_process_mid_task(d: Deployment, worker: str) -> list[str]:
    """SIGKILL a pool process of ``worker`` while it runs a task; return the message ids it ran."""
    pool, busy = caught_running(d, worker)
    victim = next(iter(busy))
    os.kill(victim, signal.SIGKILL)
    let_go([pid for pid in pool if pid != victim])
    # the worker answers with the arguments' (redacted) repr
    return re.findall(r"'message_id': '([^']+)'", str(busy[victim].get("args")))


def kill_worker_mid_task(d: Deployment, worker: str) -> None:
    """SIGKILL the whole of ``worker`` while one of its pool processes runs a task: it surely dies
    with a message in hand."""
    caught_running(d, worker)
    d.kill(worker)


def unacked(d: Deployment) -> dict[str, str]:
    """Redis' unacknowledged messages: delivery tag -> the message_id of the task's message."""
    found = {}
    with redis.Redis.from_url(d.broker_url) as r:
        for tag, raw in r.hgetall("unacked").items():
            payload = json.loads(raw)[0]
            body = payload["body"]
            if payload["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            message = args[0] if args and isinstance(args[0], dict) else {}
            found[tag.decode()] = message.get("message_id", "?")
    return found


def test_a_pool_process_and_a_whole_worker_killed_mid_stream_lose_and_double_nothing(deployment):
    # given two workers with a short visibility timeout, and 900 provider messages flowing in
    d: Deployment = deployment(MATOMETE_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    d.start_worker("w1")
    d.start_worker("w2")
    flow = Flow(d, "kill").build(900).start(pace=0.01)  # still flowing when w1 is killed whole
    wait_until(lambda: flow.decided() >= 30, timeout=60, message="the flow to get going")

    # when a pool process of each worker is SIGKILLed in the middle of a task
    kills: list[tuple[float, list[str]]] = []
    for worker in ("w1", "w2", "w1"):
        ids = kill_a_pool_process_mid_task(d, worker)
        kills.append((time.monotonic(), ids))
        time.sleep(0.5)
    caught = [mid for _, ids in kills for mid in ids]
    # then the tasks they were running are decided after all, once the queue before them is
    decided_at = flow.decided_times(caught, timeout=60)
    pool_kill_recovery = max(decided_at[mid] - at for at, ids in kills for mid in ids)

    # when the whole of w1 is SIGKILLed in the middle of a task, and started again a moment later
    sent_before_kill = flow.sent_ids()
    killed_at = time.monotonic()
    kill_worker_mid_task(d, "w1")
    time.sleep(1)  # w2 acknowledges what it runs; what stays unacknowledged was w1's
    orphans = unacked(d)
    d.start_worker("w1")
    # then w1's unacknowledged messages are handed out again after about the visibility timeout
    back_at = wait_until(lambda: not set(orphans) & set(unacked(d)) and time.monotonic(),
                         timeout=VISIBILITY_S + 90, interval=0.2, message="w1's messages to be restored")
    # and everything sent before the kill is decided, with nothing re-sent: a message w1 had just
    # taken was recorded as unacknowledged in the same step (workers/transport.py)
    decided_at = flow.wait_decided(sent_before_kill, timeout=VISIBILITY_S + 90)
    flow.join()
    flow.wait_decided(timeout=VISIBILITY_S + 90)

    # and every message was decided once, with its one charge, and published without a gap
    d.relay_and_wait()
    outbound = flow.outbound_gaps(d.drain_outbound())
    figures = flow.figures()
    worker_lost = sum(log.read_text(errors="replace").count("WorkerLostError") for log in d.logs.values())
    replays = sum(log.read_text(errors="replace").count("'replayed': True") for log in d.logs.values())
    report("worker killed", **figures, pool_processes_killed_mid_task=len(caught),
           whole_worker_kills=1, orphaned_by_worker_kill=len(orphans), replayed_redeliveries=replays,
           worker_lost_errors_logged=worker_lost, recovery_s_pool_kill=round(pool_kill_recovery, 1),
           recovery_s=round(max(back_at, decided_at) - killed_at, 1), visibility_timeout_s=VISIBILITY_S,
           outbound=outbound)
    assert len(caught) >= 3  # one message each, at least
    assert orphans  # the kill did leave messages in flight
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["not_as_expected"] == 0 and figures["quarantined"] == {}, figures
    assert outbound["gaps"] == 0 and outbound["mismatched"] == 0, outbound
