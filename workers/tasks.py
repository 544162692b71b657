"""One thin task per inbound message: hand the message to the bus, return its decision.

Every task takes exactly one positional argument, the message; anything else is quarantined by
the bus. Transient database errors are retried with backoff, never turned into a decision.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache, partial

import redis
from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from matomete_core.adapters.database import is_transient
from matomete_core.adapters.relay import KombuPublisher, publish_written, relay
from matomete_core.config import Settings
from matomete_core.service import bus, close, housekeeping
from matomete_core.service.deps import Deps, bootstrap
from workers import collector, metrics
from workers.app import TIMINGS, app
from workers.outbound import Courier

log = logging.getLogger(__name__)
MAX_BACKOFF_S = TIMINGS.max_retry_backoff  # under the visibility timeout: see workers/app.py
MAX_ATTEMPTS = 4  # of a message whose handling fails for a reason that is not transient
MAX_DELIVERIES = 5  # of a message whose worker process dies with it every time (see WorkerLostEachTime)


class WorkerLostEachTime(Exception):
    """The message came back MAX_DELIVERIES times: its worker process died on it each time (killed,
    out of memory, or past the hard time limit)."""


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built on first use in each worker process (after the fork), never at import."""
    settings = Settings.from_env()
    return bootstrap(settings, publisher=KombuPublisher(settings.broker_url))


RELAY_SETTLED = timedelta(seconds=5)  # beat leaves a row this long to the worker that wrote it


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _relay_quietly(d: Deps) -> None:
    """Publish what is in the outbox; what fails here stays there for the beat relay."""
    try:
        relay(d.engine, d.publisher, now=_now())
    except Exception:  # noqa: BLE001 — the outbox keeps it; beat retries
        log.warning("outbox relay failed; beat will relay", exc_info=True)


def publish_quietly(d: Deps, rows: list) -> None:
    """Publish outbound rows a transaction committed (a courier's work, and the batch worker's);
    what fails here stays in the outbox for the beat relay."""
    try:
        publish_written(d.engine, d.publisher, rows, now=_now())
    except Exception:  # noqa: BLE001 — the outbox keeps it; beat retries
        log.warning("publishing after commit failed; beat will relay", exc_info=True)


@lru_cache(maxsize=1)
def courier() -> Courier:
    """This process's courier (workers.outbound), built on first use, like deps()."""
    return Courier(partial(publish_quietly, deps()))


@worker_ready.connect(weak=False)  # the main process, consuming
@worker_process_init.connect(weak=False)  # each pool process, forked
def settle_collector(**_: object) -> None:
    """Start-up is done: freeze what it built, collect young garbage in larger steps (workers.collector)."""
    collector.settle()


@worker_process_shutdown.connect(weak=False)
def close_courier(**_: object) -> None:
    """Publish what the courier holds, and stop it: a pool process is shutting down. What it
    cannot publish in time stays in the outbox for the beat relay."""
    if courier.cache_info().currsize:
        courier().close(timeout=5)
        courier.cache_clear()


@lru_cache(maxsize=1)
def _broker_redis() -> redis.Redis | None:
    url = Settings.from_env().broker_url
    return redis.Redis.from_url(url) if url.startswith(("redis://", "rediss://")) else None


def deliveries(task: Task) -> int:
    """How often a message has come back after its worker process died (0 on a first delivery),
    counted in the broker's Redis: the broker only says *that* it was redelivered."""
    if not (getattr(task.request, "delivery_info", None) or {}).get("redelivered"):
        return 0
    client = _broker_redis()
    if client is None:
        return 0
    key = f"matomete:deliveries:{task.request.id}"
    count, _ = client.pipeline().incr(key).expire(key, 24 * 3600).execute()
    return int(count)


def decide(task: Task, args: tuple, kwargs: dict) -> dict:
    """Decide one message. Transient errors retry with backoff for as long as they last; any other
    failure retries a few times, then the message is quarantined — never dropped; and a message
    that takes its worker process down with it every time is quarantined after MAX_DELIVERIES."""
    d = deps()
    started = time.monotonic()
    attempt = task.request.retries or 0
    try:
        if deliveries(task) >= MAX_DELIVERIES:
            raise WorkerLostEachTime()
        decision = bus.handle(d, task.name, args, kwargs, now=_now(), on_commit=courier().put)
    except WorkerLostEachTime as exc:
        decision = _quarantine(task, d, args, kwargs, exc, MAX_DELIVERIES)
    except Exception as exc:
        countdown = min(MAX_BACKOFF_S, 2 ** attempt)
        if is_transient(exc):
            log.warning("transient error, retrying in %ss: %s", countdown, type(exc).__name__)
            raise task.retry(exc=exc, countdown=countdown, max_retries=None) from None
        if attempt + 1 < MAX_ATTEMPTS:
            log.exception("handling failed (attempt %s of %s)", attempt + 1, MAX_ATTEMPTS)
            raise task.retry(exc=exc, countdown=countdown, max_retries=MAX_ATTEMPTS) from None
        decision = _quarantine(task, d, args, kwargs, exc, MAX_ATTEMPTS)
    metrics.observe_decision(task.name, decision, time.monotonic() - started)
    if decision["status"] == "quarantined":  # its own transaction may have queued a provider result
        _relay_quietly(d)
    return decision


def _quarantine(task: Task, d: Deps, args: tuple, kwargs: dict, exc: Exception, attempts: int) -> dict:
    """Keep the message for an operator; if even that fails (the database went away meanwhile), it
    is retried later rather than acknowledged with nowhere to be found."""
    try:
        return bus.quarantine_failure(d, task.name, args, kwargs, exc, attempts, now=_now())
    except Exception as failure:
        log.warning("quarantining failed, retrying in %ss: %s", MAX_BACKOFF_S, type(failure).__name__)
        raise task.retry(exc=failure, countdown=MAX_BACKOFF_S, max_retries=None) from None


def inbound(name: str):  # noqa: ANN201
    """The house task decorator: a stable name, late acks, the bus, secrets hidden from Celery's
    logs and events (workers.requests)."""
    def register(fn):  # noqa: ANN001, ANN202
        # max_retries=None: retry(max_retries=None) means "the task's limit", and Celery's default
        # limit (3) would fail — and so drop — a message after a few seconds of database outage.
        # acks_on_timeout=False: a pool process killed by the hard time limit gives its message
        # back to the queue, as one killed any other way does (reject_on_worker_lost), and
        # MAX_DELIVERIES quarantines one that hangs every time; Celery's default acknowledges it
        # and the message is gone, with only a failed result to tell
        @app.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True, acks_on_timeout=False,
                  max_retries=None, Request="workers.requests:RedactedRequest")
        def task(self, *args, **kwargs):  # noqa: ANN001, ANN202
            return decide(self, args, kwargs)
        task.__doc__ = fn.__doc__
        return task
    return register


@inbound("matomete.purchase")
def purchase() -> None:
    """A provider's purchase event."""


@inbound("matomete.cancel")
def cancel() -> None:
    """A provider's cancel (monthly flat) or void (per use)."""


@inbound("matomete.line_change")
def line_change() -> None:
    """The order system's notice of a change (異動) to a line."""


@inbound("matomete.set_restriction")
def set_restriction() -> None:
    """The customer restricts, or lifts, one Passport ID or the whole line."""


@inbound("matomete.set_limits")
def set_limits() -> None:
    """The customer changes the line limit and/or Passport IDs' own limits."""


@inbound("matomete.register_passport_id")
def register_passport_id() -> None:
    """Registering a new Passport ID: refused since December 2024."""


@inbound("matomete.update_registration")
def update_registration() -> None:
    """Changing registration details: refused, they are view-only since December 2024."""


@app.task(name="matomete.relay_outbox")
def relay_outbox() -> int:
    """Beat's relay: what no worker published, once it has had the time to (RELAY_SETTLED)."""
    d = deps()
    return relay(d.engine, d.publisher, now=_now(), settled_for=RELAY_SETTLED)


@app.task(name="matomete.expire_held_cancels")
def expire_held_cancels() -> int:
    d = deps()
    count = housekeeping.expire_held(d, now=_now())
    _relay_quietly(d)
    return count


@app.task(name="matomete.prune_outbox", acks_late=False, time_limit=3600, soft_time_limit=3540)
def prune_outbox() -> int:
    """Beat, daily. Acknowledged on receipt, with a long limit: a first prune of a large outbox
    may take a while, and one cut short has committed its chunks; the next day goes on."""
    return housekeeping.prune_outbox(deps(), now=_now())


# A close of a large month runs for minutes, far past the time limit of a message task (which must
# stay under the visibility timeout only because those ack late). This one is acknowledged on
# receipt, so a long limit is safe: a close cut short resumes at the next tick.
CLOSE_TIME_LIMIT_S = 3 * 3600


@app.task(name="matomete.close_due_months", acks_late=False,
          time_limit=CLOSE_TIME_LIMIT_S, soft_time_limit=CLOSE_TIME_LIMIT_S - 60)
def close_due_months() -> list[dict]:
    """Beat: close every month that is due (see service.close.months_due)."""
    d = deps()
    try:
        closed = close.close_due_months(d.engine, now=_now(), close_hour=d.settings.close_hour,
                                        export_dir=d.settings.export_dir, progress=metrics.MonthCloseTimer())
    except close.CloseInProgress:
        return []
    _relay_quietly(d)
    return closed
