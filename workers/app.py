"""The Celery app: broker, queues, routes, reliability settings and the beat schedule.

Reliability: a message is taken off its queue and recorded as unacknowledged in one atomic step
(workers/transport.py); tasks are acknowledged late (after the decision has committed) and
rejected back to the queue when a worker process dies mid-task; a message a worker took but never
acknowledged comes back after the Redis visibility timeout. Task time limits stay below that
timeout so a slow task is never delivered twice while it still runs.

Everything time-bound follows from one setting, ``MATOMETE_VISIBILITY_TIMEOUT`` = V seconds
(default 90; see ``timings``):

* a pool process killed mid-task: Celery rejects its message with requeue (reject_on_worker_lost):
  kombu puts it back at the end of its queue, where it is taken after what was queued before it;
* a whole worker killed (SIGKILL, OOM, a lost host): its unacknowledged messages — the running
  ones and the prefetched ones — sit in Redis' ``unacked`` hash. kombu 5.7 gives them back when a
  consuming worker's sweep (``restore_visible``) finds them older than V: one sweep when a
  worker's consumer starts, then one every ``unacked_restore_interval`` ×
  ``unacked_restore_throttle`` seconds — by kombu's defaults 10 × 10 = 100 s, here every R s
  (throttle 1). So in-flight work comes back within V + R seconds (90 + 5 = 95 s by default,
  under 2 minutes) once any worker runs. A worker killed while it held the sweep's mutex
  delays the others' sweeps until the mutex expires (here V/6 s, kombu's default is 300 s);
* the hard time limit is ⅔ V (60 s by default), the soft one a little less, so a task still
  running is never handed out again; a pool process killed at the hard limit gives its message
  back to the queue like any killed one (the inbound tasks set ``acks_on_timeout=False``);
* a retry's countdown stays under V/3 (30 s by default): a retry waits in its worker unacknowledged,
  and a countdown longer than V would have Redis hand it out again while it waits, doubling it on
  every retry of a long outage.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from matomete_core.config import Settings

INBOUND_QUEUES = ("provider-events", "line-changes", "customer-commands")
HOUSEKEEPING_QUEUE = "matomete-housekeeping"


@dataclass(frozen=True)
class Timings:
    """The reliability settings that follow from the visibility timeout (seconds; see above)."""

    visibility_timeout: int
    time_limit: int
    soft_time_limit: int
    restore_interval: int
    restore_mutex_expire: int
    max_retry_backoff: int


def timings(visibility_timeout: int) -> Timings:
    time_limit = min(60, visibility_timeout * 2 // 3)
    return Timings(visibility_timeout=visibility_timeout, time_limit=time_limit,
                   soft_time_limit=time_limit - max(1, time_limit // 6),
                   restore_interval=max(1, min(5, visibility_timeout // 10)),
                   restore_mutex_expire=max(5, visibility_timeout // 6),
                   max_retry_backoff=max(1, min(30, visibility_timeout // 3)))


ROUTES = {
    "matomete.purchase": "provider-events",
    "matomete.cancel": "provider-events",
    "matomete.line_change": "line-changes",
    "matomete.set_restriction": "customer-commands",
    "matomete.set_limits": "customer-commands",
    "matomete.register_passport_id": "customer-commands",
    "matomete.update_registration": "customer-commands",
    "matomete.relay_outbox": HOUSEKEEPING_QUEUE,
    "matomete.expire_held_cancels": HOUSEKEEPING_QUEUE,
    "matomete.close_due_months": HOUSEKEEPING_QUEUE,
    "matomete.prune_outbox": HOUSEKEEPING_QUEUE,
}


def transport_for(broker_url: str) -> str | None:
    """The workers' transport, which takes a message and records it in one step, for a Redis URL;
    None (kombu's own, by the URL's scheme) for any other — Sentinel, a Unix socket — which takes
    without that guarantee."""
    return "workers.transport:Transport" if broker_url.partition("://")[0] in ("redis", "rediss") else None


def create_app(settings: Settings) -> Celery:
    app = Celery("matomete", broker=settings.broker_url, backend=settings.result_backend,
                 include=["workers.tasks", "workers.probe"],
                 task_cls="workers.requests:CheckedTask")  # a malformed message never stops a worker
    t = timings(settings.visibility_timeout)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        result_expires=24 * 3600, result_extended=False,
        task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=t.time_limit, task_soft_time_limit=t.soft_time_limit,
        broker_transport_options={"visibility_timeout": t.visibility_timeout,
                                  "unacked_restore_interval": t.restore_interval,
                                  "unacked_restore_throttle": 1,
                                  "unacked_mutex_expire": t.restore_mutex_expire},
        result_backend_transport_options={"visibility_timeout": t.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_transport=transport_for(settings.broker_url),
        worker_consumer="workers.consumer:Consumer",  # rides out a kombu error on a lost connection
        task_queues=[Queue(q, routing_key=q) for q in (*INBOUND_QUEUES, HOUSEKEEPING_QUEUE)],
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_default_queue=HOUSEKEEPING_QUEUE,
        timezone="Asia/Tokyo", enable_utc=True,
        beat_schedule={
            "relay the outbox": {"task": "matomete.relay_outbox", "schedule": 10.0,
                                 "options": {"expires": 10}},
            "expire held cancels": {"task": "matomete.expire_held_cancels", "schedule": crontab(minute="*"),
                                    "options": {"expires": 60}},
            # level-triggered: every tick closes whatever month is due and not closed yet, so the
            # first tick after 03:00 JST on the 1st closes the previous month, and a beat that was
            # down catches up; the close lock keeps two beats from closing at once
            "close ended months": {"task": "matomete.close_due_months", "schedule": crontab(minute="*/10"),
                                   "options": {"expires": 600}},
            "prune the published outbox": {"task": "matomete.prune_outbox", "schedule": crontab(hour=4, minute=30),
                                           "options": {"expires": 3600}},
        },
    )
    return app


_settings = Settings.from_env()
app = create_app(_settings)
TIMINGS = timings(_settings.visibility_timeout)
VISIBILITY_TIMEOUT_S = TIMINGS.visibility_timeout
TASK_TIME_LIMIT_S = TIMINGS.time_limit
