"""A raw entry of a broker queue, read as a Celery task message, and set aside when it is none.

Both workers take entries straight off Redis lists (workers.transport.TAKE). An entry that is no
task message a worker can decide — not JSON, no kombu envelope, no delivery tag, not JSON inside —
is quarantined here, whichever worker or sweep meets it, and always the same way:

* the task's own body is kept when the envelope can be read, so that its secrets are redacted
  (an envelope carries the body as text, which redaction cannot see into), else the entry as it
  came;
* the same entry gives the same quarantine row, whose key is its content: two sweeps of the held
  list, or a worker and a sweep, that both meet it before either removes it store it once.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from matomete_core.messages import Decision
from matomete_core.reasons import Quarantine
from matomete_core.service.quarantine import quarantine_message, readable
from workers.transport import NO_TAG

__all__ = ["Taken", "decode", "quarantine_entry"]


@dataclass
class Taken:
    """One entry as taken from a queue."""

    raw: bytes
    tag: str | None = None
    task_id: str | None = None
    task: str = ""
    args: list | None = None
    kwargs: dict | None = None
    redelivered: bool = False
    problem: str | None = None  # why it is not a task message we can decide
    body: bytes | str | None = None  # the task's own body, once the envelope is read


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def decode(raw: bytes, tag: str | None) -> Taken:
    """A kombu message carrying a Celery protocol-2 task, JSON-serialized; ``tag`` is the delivery
    tag it was recorded by when taken (None: it was held, see workers.transport.TAKE)."""
    taken = Taken(raw, tag)
    try:
        payload = json.loads(raw)
        props, headers = payload["properties"], payload["headers"]
        task_id, task = headers.get("id"), headers.get("task")
        taken.task_id, taken.task = _text(task_id) or None, _text(task)
        taken.redelivered = bool(headers.get("redelivered") or (props.get("delivery_info") or {}).get("redelivered"))
        if payload.get("content-type") != "application/json":
            taken.problem = f"content type {payload.get('content-type')!r}: JSON messages only"
            return taken
        body = payload["body"]
        if props.get("body_encoding") == "base64":
            body = base64.b64decode(body)
        taken.body = body
        args, kwargs, _embed = json.loads(body)
        taken.args, taken.kwargs = list(args), dict(kwargs)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        taken.problem = taken.problem or f"not a Celery protocol 2 task message: {type(exc).__name__}"
    if tag is None and taken.problem is None:
        taken.problem = NO_TAG
    return taken


def quarantine_entry(engine: Engine, taken: Taken, *, now: datetime, detail: str | None = None) -> Decision:
    """Quarantine an entry that is no task message we can decide (INVALID_MESSAGE), for ``detail``
    or else the reason ``decode`` found."""
    body = readable(taken.raw if taken.body is None else taken.body)
    return quarantine_message(engine, task=taken.task or "unknown", reason=Quarantine.INVALID_MESSAGE,
                              detail=taken.problem or detail or "", body=body, now=now)
