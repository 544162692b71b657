"""A database outage is retried for as long as it lasts (workers/tasks.py), through Celery's own
retry machinery — not only through a fake task. Celery reads ``retry(max_retries=None)`` as "the
task's default", which is 3 unless the task says otherwise: before the fix the fourth retry
re-raised the OperationalError, the task failed, and its message was acknowledged and lost
(the fault suite saw every message in flight lost to a 30-second PostgreSQL restart)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import OperationalError

from matomete_core.service import bus
from workers import tasks


def test_every_inbound_task_retries_transient_errors_without_limit():
    for name in ("matomete.purchase", "matomete.cancel", "matomete.line_change", "matomete.set_restriction",
                 "matomete.set_limits", "matomete.register_passport_id", "matomete.update_registration"):
        assert tasks.app.tasks[name].max_retries is None, name


@pytest.mark.parametrize("failures", [3, 4, 12])
def test_a_database_outage_of_any_length_ends_in_the_decision(deps, provider, monkeypatch, failures):
    # given a database that refuses connections for the first few attempts
    monkeypatch.setattr(tasks, "deps", lambda: deps)
    real, calls = bus.handle, []

    def outage(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) <= failures:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bus, "handle", outage)
    message = provider.message("PA", datetime.now(timezone.utc) - timedelta(minutes=1), order_id="o1", passport_id="user01", content_id="pack")
    # when the real task runs (eagerly: Celery applies each retry at once, countdown aside)
    result = tasks.app.tasks["matomete.purchase"].apply(args=[message])
    # then it retried through the outage and decided
    assert result.successful(), result.traceback
    assert result.get()["status"] == "accepted" and len(calls) == failures + 1

