"""Prometheus metrics of a worker, served over HTTP on ``MATOMETE_METRICS_PORT`` (default 9808).

The domain never sees this module: the bus returns decisions and the task layer observes them.

Observed in the pool process that did the work (summed across processes, see ``workers.multiproc``):

    matomete_decisions_total{task,status,reason}       counter; reason "" when there is none
    matomete_decision_duration_seconds{task}           histogram, from the task's start to its decision
    matomete_month_close_duration_seconds              histogram, a month close run by beat

Read from the database on each scrape (``DatabaseCollector``; the same on every worker, so
aggregate them with ``max``, never ``sum``):

    matomete_quarantine_messages{reason}               quarantined messages not replayed yet
    matomete_outbox_unpublished_rows{kind}             outbox rows the relay has not published yet:
                                                       kind "event" (one message each, from decisions) or
                                                       "batch" (a month close's charges or invoices)
    matomete_outbox_oldest_unpublished_age_seconds{kind}  age of the oldest of them (0 when none)
    matomete_month_close_step{month}                   steps of the close done, 0..7 (7: closed)
    matomete_month_close_pending_seconds               seconds since the last month ended while it is
                                                       not closed yet (0 once closed, or with nothing to close)
    matomete_database_up                               1 when those queries succeeded

Read from a Redis broker on each scrape (``BrokerCollector``; again the same on every worker, ``max``):

    matomete_queue_messages{queue}                     messages waiting on an inbound queue (all priorities)
    matomete_queue_unacked_messages                    messages taken by a worker and not acknowledged yet
                                                       (being decided, or their worker died: they come back
                                                       after the visibility timeout)
    matomete_broker_up                                 1 when the broker could be read

Serving: with the prefork pool the HTTP server runs in the worker's main process, started when the
worker is ready (``enable``), and serves the sum of every pool process's file plus the database
and broker gauges. ``MATOMETE_METRICS_PORT=0`` turns it off; a port already taken is logged and the worker
runs on without metrics (deciding messages matters more than describing it).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import redis
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, exists, func, select
from sqlalchemy.pool import NullPool

from matomete_core.adapters.tables import billing_months, outbox, purchases, quarantine
from matomete_core.calendar import add_months, billing_month, month_start
from matomete_core.config import Settings
from matomete_core.reasons import Quarantine
from matomete_core.service.close import STEPS
from workers.app import INBOUND_QUEUES, transport_for
from workers.transport import UNACKED

__all__ = ["DECISIONS", "DECISION_SECONDS", "MONTH_CLOSE_SECONDS", "DB_GAUGES", "BROKER_GAUGES", "METRIC_NAMES",
           "DEFAULT_PORT", "observe_decision", "MonthCloseTimer", "DatabaseCollector", "BrokerCollector",
           "registry_for_serving", "serve", "enable"]

log = logging.getLogger(__name__)
DEFAULT_PORT = 9808
MONTHS_SHOWN = 3  # month_close_step for the latest months only: the label set stays small

DECISIONS = Counter("matomete_decisions", "Decisions made, by task, status and reason",
                    ["task", "status", "reason"])
DECISION_SECONDS = Histogram("matomete_decision_duration_seconds",
                             "Seconds from a task's start to its decision", ["task"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MONTH_CLOSE_SECONDS = Histogram("matomete_month_close_duration_seconds",
                                "Seconds a month close run by beat took, from its first step to closed",
                                buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400))

DB_GAUGES = {
    "matomete_quarantine_messages": "Quarantined messages not replayed yet, by reason",
    "matomete_outbox_unpublished_rows": "Outbox rows not published yet, by kind (event or batch)",
    "matomete_outbox_oldest_unpublished_age_seconds": "Age of the oldest unpublished outbox row, by kind (0: none)",
    "matomete_month_close_step": f"Steps of a month's close done, 0..{len(STEPS)} ({len(STEPS)}: closed)",
    "matomete_month_close_pending_seconds": "Seconds since the last month ended (JST) while it is not closed",
    "matomete_database_up": "1 when the database gauges could be read",
}
BROKER_GAUGES = {
    "matomete_queue_messages": "Messages waiting on an inbound queue, all priorities",
    "matomete_queue_unacked_messages": "Messages taken by a worker and not acknowledged yet",
    "matomete_broker_up": "1 when the broker gauges could be read",
}
# every name a scrape can show: dashboards and alert rules may use only these (tests/contract)
METRIC_NAMES = frozenset({
    "matomete_decisions_total", "matomete_decision_duration_seconds_bucket",
    "matomete_decision_duration_seconds_sum", "matomete_decision_duration_seconds_count",
    "matomete_month_close_duration_seconds_bucket", "matomete_month_close_duration_seconds_sum",
    "matomete_month_close_duration_seconds_count", *DB_GAUGES, *BROKER_GAUGES,
})


def observe_decision(task: str, decision: dict[str, Any], seconds: float) -> None:
    """Count one decision and how long it took."""
    DECISIONS.labels(task=task, status=decision.get("status") or "", reason=decision.get("reason") or "").inc()
    DECISION_SECONDS.labels(task=task).observe(seconds)


class MonthCloseTimer:
    """The ``progress`` callback of ``close.close_due_months``: times each month's close, one
    instance per run (a close interrupted and resumed later is timed from its resumption)."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def __call__(self, month: str, step: str, done: int, total: int) -> None:
        started = self._started.setdefault(month, time.monotonic())
        if done >= total:
            MONTH_CLOSE_SECONDS.observe(time.monotonic() - started)
            del self._started[month]


class DatabaseCollector:
    """The gauges that are facts of the database, read when Prometheus scrapes."""

    def __init__(self, engine: Engine, clock=lambda: datetime.now(timezone.utc)):  # noqa: ANN001
        self._engine = engine
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration, and no query before the first scrape

    def collect(self) -> Iterator[Metric]:
        return _read_or_down("matomete_database_up", DB_GAUGES, "database", lambda: self._read(self._clock()))

    def _read(self, now: datetime) -> list[Metric]:
        with self._engine.connect() as conn:
            waiting = dict(conn.execute(select(quarantine.c.reason, func.count()).where(
                quarantine.c.replayed_at.is_(None)).group_by(quarantine.c.reason)).all())
            is_event = outbox.c.batch.is_(None)
            backlog = {"event" if event else "batch": (n, oldest) for event, n, oldest in conn.execute(
                select(is_event, func.count(), func.min(outbox.c.created_at)).where(
                    outbox.c.published_at.is_(None)).group_by(is_event)).all()}
            months = conn.execute(select(billing_months.c.month, billing_months.c.step, billing_months.c.status)
                                  .order_by(billing_months.c.month.desc()).limit(MONTHS_SHOWN)).all()
            last = add_months(billing_month(now), -1)
            closed = conn.execute(select(billing_months.c.status).where(billing_months.c.month == last)).scalar()
            anything = closed is not None or conn.execute(select(exists().where(
                purchases.c.start_month <= last))).scalar()
        quarantined = GaugeMetricFamily("matomete_quarantine_messages", DB_GAUGES["matomete_quarantine_messages"],
                                        labels=["reason"])
        for reason in sorted({*Quarantine, *waiting}):
            quarantined.add_metric([str(reason)], waiting.get(reason, 0))
        rows = GaugeMetricFamily("matomete_outbox_unpublished_rows", DB_GAUGES["matomete_outbox_unpublished_rows"],
                                 labels=["kind"])
        ages = GaugeMetricFamily("matomete_outbox_oldest_unpublished_age_seconds",
                                 DB_GAUGES["matomete_outbox_oldest_unpublished_age_seconds"], labels=["kind"])
        for k in ("event", "batch"):
            n, oldest = backlog.get(k, (0, None))
            rows.add_metric([k], n)
            ages.add_metric([k], _age(now, oldest))
        steps = GaugeMetricFamily("matomete_month_close_step", DB_GAUGES["matomete_month_close_step"],
                                  labels=["month"])
        for month, step, status in months:
            steps.add_metric([month], len(STEPS) if status == "closed" else
                             (STEPS.index(step) + 1 if step in STEPS else 0))
        pending = (now - month_start(billing_month(now))).total_seconds() if anything and closed != "closed" else 0
        return [quarantined, rows, ages, steps,
                GaugeMetricFamily("matomete_month_close_pending_seconds",
                                  DB_GAUGES["matomete_month_close_pending_seconds"], value=pending)]


class BrokerCollector:
    """The gauges that are facts of a Redis broker, read when Prometheus scrapes: how many messages
    wait on each inbound queue and how many are taken but not acknowledged. A queue that has
    messages and does not get shorter is one that no worker consumes (ops/prometheus/alerts.yml)."""

    def __init__(self, broker_url: str):
        self._broker_url = broker_url

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return _read_or_down("matomete_broker_up", BROKER_GAUGES, "broker", self._read)

    def _read(self) -> list[Metric]:
        # a connection a scrape, as the database gauges (serve): none for a forked process to inherit;
        # short timeouts: a scrape must answer while the broker does not
        with redis.Redis.from_url(self._broker_url, socket_timeout=2, socket_connect_timeout=2) as client, \
                client.pipeline(transaction=False) as pipe:
            for queue in INBOUND_QUEUES:
                for key in _priority_keys(queue):
                    pipe.llen(key)
            pipe.hlen(UNACKED)
            lengths = pipe.execute()
        queued = GaugeMetricFamily("matomete_queue_messages", BROKER_GAUGES["matomete_queue_messages"],
                                   labels=["queue"])
        steps = len(RedisChannel.priority_steps)
        for n, queue in enumerate(INBOUND_QUEUES):
            queued.add_metric([queue], sum(lengths[n * steps:(n + 1) * steps]))
        return [queued, GaugeMetricFamily("matomete_queue_unacked_messages",
                                          BROKER_GAUGES["matomete_queue_unacked_messages"], value=lengths[-1])]


def _read_or_down(up_name: str, described: dict[str, str], source: str,
                  read: Callable[[], list[Metric]]) -> Iterator[Metric]:
    """``up_name`` 1 and the families ``read`` returns; ``up_name`` 0 alone, and a warning, when it
    fails: a scrape must answer even when the database or the broker does not."""
    up = GaugeMetricFamily(up_name, described[up_name])
    try:
        families = read()
    except Exception:  # noqa: BLE001
        log.warning("metrics: the %s gauges could not be read", source, exc_info=True)
        up.add_metric([], 0)
        return iter([up])
    up.add_metric([], 1)
    return iter([up, *families])


def _priority_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in, one a priority step (``queue`` itself for 0)."""
    return [queue if pri == 0 else f"{queue}{RedisChannel.sep}{pri}" for pri in RedisChannel.priority_steps]


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:  # SQLite, read by an aggregate: no type to make it aware
        then = then.replace(tzinfo=timezone.utc)
    return max(0.0, (now - then).total_seconds())


def registry_for_serving(engine: Engine, broker_url: str | None = None) -> CollectorRegistry:
    """What the worker serves: every process's metrics (multiprocess mode) or this process's, plus
    the database gauges, and the broker gauges when the broker is Redis."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (DECISIONS, DECISION_SECONDS, MONTH_CLOSE_SECONDS):
            registry.register(collector)
    registry.register(DatabaseCollector(engine))
    if broker_url and transport_for(broker_url):
        registry.register(BrokerCollector(broker_url))
    return registry


def serve(port: int, settings: Settings, addr: str = "0.0.0.0") -> bool:  # noqa: S104 — a container's metrics port
    """Serve the metrics on ``port``; False (and an error logged) when it cannot."""
    from matomete_core.adapters.database import make_engine

    # NullPool: no connection is held open between scrapes, so a pool process forked later
    # inherits none of them
    engine = make_engine(settings.database_url, poolclass=NullPool)
    try:
        start_http_server(port, addr=addr, registry=registry_for_serving(engine, settings.broker_url))
    except OSError as exc:
        log.error("metrics not served: port %s: %s (set MATOMETE_METRICS_PORT; 0 turns metrics off)", port, exc)
        return False
    log.info("metrics served on port %s", port)
    return True


def configured_port() -> int:
    text = os.environ.get("MATOMETE_METRICS_PORT", "").strip()
    try:
        port = int(text) if text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"MATOMETE_METRICS_PORT={text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"MATOMETE_METRICS_PORT={port} is not a port number")
    return port


def enable() -> int:
    """Called by ``matomete worker``: serve the metrics once the worker is ready, and drop a pool
    process's live gauges when it exits. Returns the port (0: off)."""
    from celery.signals import worker_process_shutdown, worker_ready

    port = configured_port()
    if port == 0:
        return 0
    settings = Settings.from_env()

    def on_ready(**_: Any) -> None:
        serve(port, settings)

    def on_process_exit(**_: Any) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    worker_ready.connect(on_ready, weak=False)
    worker_process_shutdown.connect(on_process_exit, weak=False)
    return port

