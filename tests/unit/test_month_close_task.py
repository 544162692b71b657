"""Beat's month close runs as a task acknowledged on receipt, with a time limit of its own."""

from __future__ import annotations

import workers.tasks  # noqa: F401 — registers the tasks


def test_beats_month_close_may_run_far_longer_than_a_message_task():
    # a 1,000,000-subscription close takes over a minute (ops/bench/month_close.py): under the
    # message tasks' limit it would be killed, and a step longer than the limit would never finish
    from workers.app import app

    task = app.tasks["matomete.close_due_months"]
    assert task.acks_late is False
    assert task.time_limit >= 3600 > app.conf.task_time_limit
    assert task.soft_time_limit < task.time_limit
