"""``matomete.noop``: a task that does nothing, on the same app, queues and settings as the real
ones — Celery's own per-task ceiling for ops/bench/decisions.py, and a liveness probe."""

from workers.app import app


@app.task(name="matomete.noop")
def noop(*_args: object, **_kwargs: object) -> None:
    return None
