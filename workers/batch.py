"""`matomete batch-worker`: provider events taken from Redis in groups and decided in micro-batches.

The same Celery task messages on the same ``provider-events`` queue as `matomete worker`, with the
same outcome for the sender: the decision stored as the task's result in the result backend (so
``AsyncResult.get()`` works), and the same rows and outbound messages (service.batch). What differs
is the plumbing — one round trip to take up to ``size`` messages, one transaction to decide them,
one pipeline to store their results, one to acknowledge them:

* take: the workers' Lua script (workers.transport.TAKE) pops the messages and, in the same atomic
  step, records each one in kombu's ``unacked`` hash and ``unacked_index`` — so if this process
  dies, any worker's visibility sweep (kombu's ``restore_visible``, which this loop runs too) puts
  them back on the queue after the visibility timeout. A body with no delivery tag (no Celery client
  sends one) cannot be restored that way: the same step moves it to the held list, which it leaves
  only once quarantined — by this process, or by any process's next sweep if this one dies first;
* decide (service.batch.decide_batch), commit;
* store every result, then acknowledge every message. Killed in between: the messages come back
  and replay from the inbox;
* publish the outbound messages the batch committed — last, so that senders get their decisions
  first; killed before, the outbox relay publishes them.

Transient database errors keep the batch and retry it with backoff (its messages stay
unacknowledged, their visibility renewed). A lost Redis connection is waited out with backoff: the
batch in hand, if its results or acks could not be stored, comes back by the sweep and replays. A
message that comes back redelivered is decided on its own and acknowledged at once; one whose
worker died with it MAX_DELIVERIES times is quarantined (workers.tasks has the same rule for
`matomete worker`). If deciding or quarantining such a message fails, it stays unacknowledged (or
held) for the sweep, and the loop goes on.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import datetime, timezone
from typing import Any, Callable

import redis
from celery import states
from kombu import Connection as KombuConnection

from matomete_core.adapters.database import is_transient
from matomete_core.service import batch, bus
from matomete_core.service.deps import Deps
from workers import collector, metrics
from workers.app import TIMINGS, app
from workers.entries import Taken, decode, quarantine_entry
from workers.tasks import MAX_ATTEMPTS, MAX_DELIVERIES, deps, publish_quietly
from workers.transport import HELD, TAKE, UNACKED, UNACKED_INDEX, take_keys, take_reply

log = logging.getLogger(__name__)

QUEUE = "provider-events"


class BatchWorker:
    def __init__(self, *, size: int = 500, max_idle_s: float = 0.02, deps_: Deps | None = None,
                 backend: Any = None, progress: Callable[[], None] = lambda: None):
        self.size, self.max_idle_s = size, max_idle_s
        self.progress = progress  # called as the loop goes round and as a batch retries (workers.batch_pool)
        self.deps = deps_ or deps()
        self.redis = redis.Redis.from_url(self.deps.settings.broker_url)
        self.take_script = self.redis.register_script(TAKE)
        self.backend = backend or app.backend  # Celery's result backend: results as a task's
        self.stopping = False
        self._sweep_at = 0.0
        self._kombu = KombuConnection(self.deps.settings.broker_url,
                                      transport_options=app.conf.broker_transport_options)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        log.info("batch worker consuming %s, up to %d messages a batch", QUEUE, self.size)
        collector.settle()
        idle, lost = 0.0, 0
        while not self.stopping:
            self.progress()
            self._sweep()
            try:
                taken = self.take()
                if taken:
                    self.process(taken)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis away (restarting, unreachable): what this batch committed is in the inbox and
                # the outbox; its messages stay unacknowledged in Redis and come back by the sweep
                lost += 1
                pause = min(TIMINGS.max_retry_backoff, 2 ** min(lost - 1, 5))
                log.warning("the broker is unreachable (%s); trying again in %ss", type(exc).__name__, pause)
                time.sleep(pause)
                continue
            lost = 0
            if taken:
                idle = 0.0
            else:
                idle = min(self.max_idle_s, max(0.001, idle * 2))
                time.sleep(idle)
        self._kombu.release()

    def _stop(self, *_: Any) -> None:
        self.stopping = True  # finish the batch in hand, then return

    def take(self) -> list[Taken]:
        out = self.take_script(keys=take_keys([QUEUE]), args=[self.size, time.time()])
        return [decode(raw, tag) for _queue, raw, tag in take_reply(out)]

    def process(self, taken: list[Taken]) -> None:
        """Decide, store the results, acknowledge; a transient error keeps the batch and retries."""
        fresh = [t for t in taken if not t.redelivered and t.problem is None]
        committed: list = []  # outbound rows committed so far, kept across retries
        attempt = 0
        while True:
            try:
                started = time.monotonic()
                decisions = batch.decide_batch(self.deps, [(t.task, t.args, t.kwargs) for t in fresh],
                                               now=_now(), on_commit=committed.extend) if fresh else []
                break
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc):
                    log.exception("a batch failed; deciding its messages one by one")
                    decisions = [self._decide_alone(t) for t in fresh]
                    break
                attempt += 1
                pause = min(TIMINGS.max_retry_backoff, 2 ** min(attempt, 5))
                log.warning("transient error, retrying the batch of %d in %ss: %s", len(fresh), pause,
                            type(exc).__name__)
                self._renew([t for t in taken if t.tag])
                time.sleep(pause)
        seconds = (time.monotonic() - started) / max(1, len(fresh))
        for t, decision in zip(fresh, decisions):
            metrics.observe_decision(t.task, decision, seconds)
        self.finish(list(zip(fresh, decisions)))
        self._publish(committed)  # after the results: the senders wait for those, the relay covers these
        for t in taken:  # the undecodable, and the redelivered: one at a time, acknowledged at once
            if t.problem is not None:
                self._set_aside(t)
            elif t.redelivered:
                self._one_by_one(t, self._decide_redelivered)

    def finish(self, done: list[tuple[Taken, dict]]) -> None:
        """Store each result (as Celery's Redis backend does), then acknowledge each message."""
        # Celery's own result format, built once: the batch's results are done at the same moment
        done_meta = self.backend._get_result_meta(result=None, state=states.SUCCESS, traceback=None, request=None)
        with self.backend.client.pipeline(transaction=False) as pipe:  # in order; no MULTI needed
            for t, decision in done:
                if t.task_id:
                    value = self.backend.encode({**done_meta, "result": decision, "task_id": t.task_id})
                    key = self.backend.get_key_for_task(t.task_id)
                    pipe.set(key, value, ex=self.backend.expires)
                    pipe.publish(key, value)
            pipe.execute()
        tags = [t.tag for t, _ in done if t.tag]
        if tags:  # as kombu's QoS.ack does for one message, for the batch's in two commands
            self.redis.pipeline().zrem(UNACKED_INDEX, *tags).hdel(UNACKED, *tags).execute()

    # ---- one at a time -------------------------------------------------------------------------

    def _decide_redelivered(self, t: Taken) -> dict:
        key = f"matomete:deliveries:{t.task_id}"
        count, _ = self.redis.pipeline().incr(key).expire(key, 24 * 3600).execute()
        if int(count) >= MAX_DELIVERIES:
            return bus.quarantine_failure(self.deps, t.task, t.args or [], t.kwargs or {},
                                          RuntimeError("the worker died with it each time"), MAX_DELIVERIES,
                                          now=_now())
        return self._decide_alone(t)

    def _decide_alone(self, t: Taken) -> dict:
        """As `matomete worker` decides: transient errors wait and retry, others MAX_ATTEMPTS times."""
        attempt = 0
        while True:
            try:
                return bus.handle(self.deps, t.task, t.args or [], t.kwargs or {}, now=_now(),
                                  on_commit=self._publish)
            except Exception as exc:  # noqa: BLE001
                attempt += 1
                if not is_transient(exc) and attempt >= MAX_ATTEMPTS:
                    log.exception("handling failed %d times; quarantined", attempt)
                    return bus.quarantine_failure(self.deps, t.task, t.args or [], t.kwargs or {}, exc,
                                                  MAX_ATTEMPTS, now=_now())
                self._renew([t] if t.tag else [])
                time.sleep(min(TIMINGS.max_retry_backoff, 2 ** min(attempt, 5)))

    def _one_by_one(self, t: Taken, decide: Callable[[Taken], dict]) -> None:
        """Decide ``t`` and acknowledge it. If that fails (the database went away as it was
        quarantined), ``t`` stays where it is — unacknowledged, or held — for the sweep to bring
        back, and the loop goes on."""
        try:
            self.finish([(t, decide(t))])
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:  # noqa: BLE001 — nothing is lost: see above
            log.warning("could not decide a message one by one; the sweep brings it back", exc_info=True)
            return
        if t.tag is None:
            self.redis.lrem(HELD, 1, t.raw)

    def _set_aside(self, t: Taken) -> None:
        """Quarantine a body that is no task message we can decide."""
        self._one_by_one(t, lambda t: quarantine_entry(self.deps.engine, t, now=_now()).model_dump(mode="json"))

    # ---- plumbing --------------------------------------------------------------------------------

    def _publish(self, rows: list) -> None:
        publish_quietly(self.deps, rows)

    def _renew(self, held: list[Taken]) -> None:
        """Still working on these: keep the visibility sweep from handing them out again."""
        self.progress()
        if held:
            self.redis.zadd(UNACKED_INDEX, {t.tag: time.time() for t in held})

    def _sweep(self) -> None:
        """kombu's visibility sweep, as a consuming worker runs it: messages of dead consumers back."""
        if time.monotonic() < self._sweep_at:
            return
        self._sweep_at = time.monotonic() + TIMINGS.restore_interval
        try:
            self._kombu.default_channel.qos.restore_visible(num=100, interval=1)
            for raw in self.redis.lrange(HELD, 0, 99):  # held by a process that died before quarantining them
                self._set_aside(decode(raw, None))
        except Exception:  # noqa: BLE001 — the next sweep tries again
            log.warning("visibility sweep failed", exc_info=True)


def _now() -> datetime:
    return datetime.now(timezone.utc)
