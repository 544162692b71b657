"""The worker's own view of an inbound task, with the secrets of its message hidden.

Celery shows a task's arguments in several places: ``argsrepr`` in the "received" and "succeeded"
log records (as their ``args`` and ``extra``), in the task events that Flower displays, and the raw
arguments in ``inspect active/reserved``. Inbound messages carry access keys and signatures, so
each inbound task's request replaces them with ``***`` (security.redact) before Celery uses them;
the task itself still receives the message as sent.
"""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from matomete_core.security import redact

__all__ = ["RedactedRequest"]


class RedactedRequest(Request):
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
