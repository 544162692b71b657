"""The Celery app: broker, queues, routes, reliability settings and the beat schedule.

Reliability: tasks are acknowledged late (after the decision has committed) and rejected back to
the queue when a worker process dies mid-task; a message a worker took but never acknowledged
comes back after the Redis visibility timeout. Task time limits stay below that timeout so a
slow task is never delivered twice while it still runs.
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from matomete_core.config import Settings

INBOUND_QUEUES = ("provider-events", "line-changes", "customer-commands")
HOUSEKEEPING_QUEUE = "matomete-housekeeping"
VISIBILITY_TIMEOUT_S = 90
TASK_TIME_LIMIT_S = 60

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
}


def create_app(settings: Settings) -> Celery:
    app = Celery("matomete", broker=settings.broker_url, backend=settings.result_backend,
                 include=["workers.tasks"])
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        result_expires=24 * 3600, result_extended=False,
        task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT_S, task_soft_time_limit=TASK_TIME_LIMIT_S - 10,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
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
        },
    )
    return app


app = create_app(Settings.from_env())
