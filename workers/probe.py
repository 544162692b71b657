"""Probe tasks on the same app, queues and settings as the real ones: Celery's own per-task ceiling
(``matomete.noop``) and that of any design that commits each message (``matomete.probe_commit``),
for ops/bench/decisions.py; and a worker's liveness and readiness probes."""

from matomete_core.adapters.database import commit_empty
from workers.app import app
from workers.tasks import deps


@app.task(name="matomete.noop")
def noop(*_args: object, **_kwargs: object) -> None:
    return None


@app.task(name="matomete.probe_commit")
def probe_commit(*_args: object, **_kwargs: object) -> None:
    """One transaction committed to the worker's database, as durably as a decision's, writing
    nothing else."""
    commit_empty(deps().engine)
