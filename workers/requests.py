"""The worker's own view of an inbound task, with the secrets of its message hidden.

Celery shows a task's arguments in several places: ``argsrepr`` in the "received" and "succeeded"
log records (as their ``args`` and ``extra``), in the task events that Flower displays, and the raw
arguments in ``inspect active/reserved``. Inbound messages carry access keys and signatures, so
each inbound task's request replaces them with ``***`` (security.redact) before Celery uses them;
the task itself still receives the message as sent.

Malformed messages: Celery decodes a protocol-2 body in the worker's main process, and a body that
decodes but is not ``[args, kwargs, embed]`` (``{}``, ``"hello"``, ``42``), or a message without an
``id`` header, raised ValueError/TypeError/KeyError out of its strategy — "Unrecoverable error",
and the worker stopped; the message went back to the queue and stopped the next worker too. The
app's task class (``CheckedTask``, set in workers.app) checks every message first and turns such a
message into an ``InvalidTaskError``, which the worker's consumer quarantines INVALID_MESSAGE
(workers.consumer), as it does a body it cannot decode at all. Neither reaches the bus.

A lost broker connection: Celery logs an ack (or a requeue) that fails and carries on, but kombu
keeps a message's prefetch credit when its ack fails, and stops reading the consumer's connection
while it has no credit. A worker whose every pool process finished while Redis was away could thus
keep its consumer on a dead connection with no credit, never reading again: a worker alive, its
queue full, nothing decided (CI saw it once). ``CheckedRequest`` lets a failed ack or requeue
raise into the consumer's loop instead, as kombu already does for a broken pipe: the consumer
reconnects on a new channel with full credit, and the message, still in Redis' ``unacked`` hash,
comes back after the visibility timeout, where the inbox replays its decision.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy

from matomete_core.security import redact

__all__ = ["RedactedRequest", "CheckedRequest", "CheckedTask", "checked_strategy", "require_protocol_2"]

logger = logging.getLogger(__name__)
# the errors kombu's ``ack_log_error``/``reject_log_error`` should log and swallow: none
RAISE_INTO_CONSUMER: tuple[type[BaseException], ...] = ()


def require_protocol_2(message: Any) -> None:
    """Raise InvalidTaskError unless ``message`` has an ``id`` header and a body of
    ``[args (array), kwargs (object), embed (object or null)]``. (A body that cannot be decoded at
    all raises kombu's DecodeError here, which Celery logs and discards.)"""
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        raise InvalidTaskError("not a task message: no id header")
    payload = message.payload
    if not (isinstance(payload, (list, tuple)) and len(payload) == 3 and isinstance(payload[0], (list, tuple))
            and isinstance(payload[1], dict) and (payload[2] is None or isinstance(payload[2], dict))):
        raise InvalidTaskError(f"not a protocol 2 task message: the body is a {type(payload).__name__}, "
                               "not [args, kwargs, embed]")


def checked_strategy(task: Task, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy, after ``require_protocol_2`` (for protocol 2 messages, whose
    body Celery has not decoded yet)."""
    handle = default_strategy(task, app, consumer, **kwargs)

    def task_message_handler(message: Any, body: Any, *args: Any, **kw: Any) -> Any:
        if body is None:
            require_protocol_2(message)
        return handle(message, body, *args, **kw)

    return task_message_handler


class CheckedRequest(Request):
    """Celery's request, but a message it cannot make sense of is an InvalidTaskError."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidTaskError(f"malformed task message: {type(exc).__name__}") from exc

    def acknowledge(self) -> None:
        """Celery's, but an ack the broker does not take reconnects the consumer (see above)."""
        if not self.acknowledged:
            self._on_ack(logger, RAISE_INTO_CONSUMER)
            self.acknowledged = True

    def reject(self, requeue: bool = False) -> None:
        """Celery's, but a reject the broker does not take reconnects the consumer (see above)."""
        if not self.acknowledged:
            self._on_reject(logger, RAISE_INTO_CONSUMER, requeue)
            self.acknowledged = True
            self.send_event("task-rejected", requeue=requeue)


class CheckedTask(Task):
    """The app's task class: every task's messages are checked before Celery builds a request."""

    Request = "workers.requests:CheckedRequest"
    Strategy = "workers.requests:checked_strategy"


class RedactedRequest(CheckedRequest):
    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = saferepr(redact(list(self._args or ())))
        self._kwargsrepr = saferepr(redact(dict(self._kwargs or {})))
        self._request_dict["argsrepr"] = self._argsrepr  # what the log records of the run show
        self._request_dict["kwargsrepr"] = self._kwargsrepr

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What ``inspect active/reserved`` answers: the redacted arguments, always."""
        return super().info(safe=True)
