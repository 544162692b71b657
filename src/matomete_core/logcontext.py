"""What a log line is about: the message being decided, bound once and carried by every line.

    with logcontext.scope(**logcontext.about(body)):   # message_id, customer_id, provider_id
        ...
        logcontext.bind(customer_id=..., application_number=...)   # as they become known

The fields live in a context variable; a log formatter (``workers.logging``) adds them to each
line. ``scope`` is reentrant — inside an open scope it binds into that one — so what the handler
learns stays bound until the outermost scope (the Celery task) ends. Only fields that match their
identifier's pattern are taken from a message: never a secret, never arbitrary text.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, Iterator

__all__ = ["ABOUT", "about", "bind", "scope", "current", "begin", "end"]

_fields: ContextVar[dict[str, Any] | None] = ContextVar("matomete_log_fields", default=None)
ABOUT = {
    "message_id": re.compile(r"[A-Za-z0-9._:-]{1,128}"),
    "customer_id": re.compile(r"CAF[0-9]{10}"),
    "provider_id": re.compile(r"[A-Za-z0-9_-]{1,32}"),
}


def about(body: Any) -> dict[str, str]:
    """The identifiers of a message that are safe to log (each only when well-formed)."""
    if not isinstance(body, dict):
        return {}
    return {k: v for k, pattern in ABOUT.items()
            if isinstance(v := body.get(k), str) and pattern.fullmatch(v)}


def bind(**fields: Any) -> None:
    """Add fields to the open scope (nothing happens outside one); None values are skipped."""
    current_fields = _fields.get()
    if current_fields is not None:
        current_fields.update({k: v for k, v in fields.items() if v is not None})


def current() -> dict[str, Any]:
    return dict(_fields.get() or {})


def begin(**fields: Any) -> Token:
    """Open a scope that ``end`` closes (for callers that cannot use ``with``, e.g. signals)."""
    token = _fields.set({})
    bind(**fields)
    return token


def end(token: Token) -> None:
    try:
        _fields.reset(token)
    except ValueError:  # opened in another context: close whatever is open here
        _fields.set(None)


@contextmanager
def scope(**fields: Any) -> Iterator[None]:
    if _fields.get() is not None:
        bind(**fields)
        yield
        return
    token = begin(**fields)
    try:
        yield
    finally:
        end(token)
