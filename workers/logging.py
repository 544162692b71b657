"""JSON log lines for the worker and beat: one object a line, with what the line is about.

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process``, ``message``; in a task,
``task`` and ``task_id``; about a message, what is known of it — ``message_id``, ``customer_id``,
``provider_id``, ``application_number`` (``matomete_core.logcontext``, bound from the message when
its task starts and by the handlers as they learn more); then the record's own ``extra`` fields
(Celery's ``data``, the bus's ``status`` and ``reason``…), and ``exception`` with a traceback.

Never a secret: a field named like one (``security.SECRET_FIELDS``: signature, access_key,
signing secrets) is written ``***`` at any depth, and so is its value wherever text quotes it
(``'signature': '…'``, ``access_key=…``).

``install()`` (``matomete worker`` and ``matomete beat``) sets this formatter on the handlers
Celery configures (``after_setup_logger``, ``after_setup_task_logger``) and binds each task's
message at ``task_prerun``, unbinding at ``task_postrun``. ``MATOMETE_LOG_FORMAT=text`` keeps
Celery's own text lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone
from typing import Any

from matomete_core import logcontext
from matomete_core.security import SECRET_FIELDS

__all__ = ["JsonFormatter", "install", "scrub"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_KEYS = "|".join(sorted((re.escape(k) for k in SECRET_FIELDS), key=len, reverse=True))
_QUOTED = re.compile(rf"""(\b(?:{_KEYS})\\?['"]?\s*[:=]\s*)(\\?['"])(?:\\.|(?!\2).)*?\2""")
_BARE = re.compile(rf"""(\b(?:{_KEYS})\s*=\s*)(?!\\?['"])[^\s,;&)}}\]]+""")
# Celery's "received" line (main process, no task running) shows the message only as the text of
# its (redacted) arguments: the identifiers are read back from that text
_IN_ARGS = {key: re.compile(rf"""'{key}': '({pattern.pattern})'""") for key, pattern in logcontext.ABOUT.items()}


def scrub(text: str) -> str:
    """``text`` with the value of every secret it quotes replaced by ``***``."""
    return _BARE.sub(r"\1***", _QUOTED.sub(r"\1\2***\2", text))


def _clean(value: Any, depth: int = 0) -> Any:
    if depth > 10:
        return "…"
    if isinstance(value, dict):
        return {str(k): "***" if str(k) in SECRET_FIELDS else _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value))


def _current_task() -> Any:
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover — celery is a dependency
        return None
    return get_current_task()


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "process": record.processName,
            "message": record.getMessage(),
        }
        task = _current_task()
        if task is not None and getattr(task.request, "id", None):
            doc.update(task=task.name, task_id=task.request.id)
        doc.update(logcontext.current())
        data = getattr(record, "data", None)
        if "message_id" not in doc and isinstance(data, dict) and isinstance(data.get("args"), str):
            doc.update({k: m.group(1) for k, p in _IN_ARGS.items() if (m := p.search(data["args"]))})
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and not (value is None and key in doc):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(_clean(doc), ensure_ascii=False, default=str)


def _json_wanted() -> bool:
    return os.environ.get("MATOMETE_LOG_FORMAT", "json").strip().lower() != "text"


def use_json(logger: logging.Logger, **_: Any) -> None:
    """``after_setup_logger`` / ``after_setup_task_logger``: JSON on every handler Celery set up."""
    if _json_wanted():
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


_tokens: dict[str, Any] = {}


def task_started(task_id: str | None = None, args: Any = None, **_: Any) -> None:
    """``task_prerun``: bind what the task's message says about itself, for the whole task."""
    first = args[0] if isinstance(args, (list, tuple)) and len(args) == 1 else None
    _tokens[task_id or ""] = logcontext.begin(**logcontext.about(first))


def task_finished(task_id: str | None = None, **_: Any) -> None:
    """``task_postrun``: unbind."""
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        logcontext.end(token)


def install() -> None:
    """Connect the formatter and the per-task binding to Celery's signals (idempotent)."""
    from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

    after_setup_logger.connect(use_json, weak=False, dispatch_uid="matomete-json-logs")
    after_setup_task_logger.connect(use_json, weak=False, dispatch_uid="matomete-json-task-logs")
    task_prerun.connect(task_started, weak=False, dispatch_uid="matomete-log-context-start")
    task_postrun.connect(task_finished, weak=False, dispatch_uid="matomete-log-context-end")
