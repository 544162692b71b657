"""The message bus: one entry point for every inbound message, whatever carried it.

    handle(deps, task, args, kwargs, now) -> the decision, as a JSON-ready dict

It checks the envelope (exactly one positional argument, a JSON object), validates the message
against its model, authenticates provider messages, and hands the message to its handler inside
one transaction. What cannot be decided is quarantined; transient database errors propagate so
the caller can retry them — they are never turned into a decision.
"""

from __future__ import annotations

import functools
import inspect
import logging
from datetime import datetime
from typing import Any, Callable

from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, select

from matomete_core import logcontext
from matomete_core.adapters.tables import providers
from matomete_core.messages import (
    INBOUND, Cancel, Decision, LineChange, Purchase, RegisterPassportId, SetLimits, SetRestriction,
    UpdateRegistration, parse)
from matomete_core.reasons import Quarantine
from matomete_core.security import signature_matches
from matomete_core.service import customer, line, outbox, provider
from matomete_core.service.deps import Deps
from matomete_core.service.inbox import Conflict
from matomete_core.service.quarantine import quarantine_message

log = logging.getLogger(__name__)

Handler = Callable[[Connection, Any, dict, datetime], Decision]

HANDLERS: dict[str, Handler] = {
    Purchase.task: provider.handle_purchase,
    Cancel.task: provider.handle_cancel,
    LineChange.task: line.handle_line_change,
    SetRestriction.task: customer.handle_set_restriction,
    SetLimits.task: customer.handle_set_limits,
    RegisterPassportId.task: customer.handle_register_passport_id,
    UpdateRegistration.task: customer.handle_update_registration,
}


def _injected(handler: Handler, deps: Deps) -> dict[str, Any]:
    """What a handler asks for by keyword beyond the message (``settings``), from ``deps``."""
    return {name: getattr(deps, name) for name in _wanted(handler)}


@functools.cache
def _wanted(handler: Handler) -> tuple[str, ...]:  # read once per handler: it is on every decision
    return tuple(name for name in ("settings",) if name in inspect.signature(handler).parameters)


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:10]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def handle(deps: Deps, task: str, args: tuple | list, kwargs: dict, *, now: datetime,
           on_commit: Callable[[list[outbox.Written]], None] | None = None) -> dict:
    """``on_commit`` gets the outbox rows the deciding transaction wrote, once it has committed."""
    # every log line while deciding carries the message's identifiers (logcontext)
    with logcontext.scope(**logcontext.about(args[0] if len(args) == 1 else None)):
        decision = _decide(deps, task, args, kwargs, now, on_commit)
        logcontext.bind(application_number=decision.application_number)
        log.info("decided", extra={"task": task, "message_id": decision.message_id, "status": decision.status,
                                   "reason": decision.reason, "application_number": decision.application_number})
    return decision.model_dump(mode="json")


def _decide(deps: Deps, task: str, args: tuple | list, kwargs: dict, now: datetime,
            on_commit: Callable[[list[outbox.Written]], None] | None) -> Decision:
    body = args[0] if len(args) == 1 else {"args": list(args)}

    def quarantined(reason: Quarantine, detail: str, sender: str | None = None, *,
                    authenticated: bool = False) -> Decision:
        return quarantine_message(deps.engine, task=task, reason=reason, detail=detail, body=body,
                                  now=now, sender=sender, tell_provider=authenticated)

    if len(args) != 1 or kwargs:
        return quarantined(Quarantine.INVALID_MESSAGE,
                           f"expected exactly one positional argument, got {len(args)} and {len(kwargs)} keyword")
    if not isinstance(body, dict):
        return quarantined(Quarantine.INVALID_MESSAGE, f"the message must be a JSON object, not {type(body).__name__}")
    model, handler = INBOUND.get(task), HANDLERS.get(task)
    if model is None or handler is None:
        return quarantined(Quarantine.INVALID_MESSAGE, f"no handler for task {task}")
    try:
        msg = parse(model, body, now=now)
    except ValidationError as exc:
        return quarantined(Quarantine.INVALID_MESSAGE, _validation_detail(exc))
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. NaN, too deep to validate
        return quarantined(Quarantine.INVALID_MESSAGE, type(exc).__name__)

    sender = getattr(msg, "provider_id", None)
    try:
        with outbox.track() as written:
            with deps.engine.begin() as conn:  # the sender is authenticated in the deciding transaction
                if sender is not None:
                    _authenticate(conn, deps, sender, body)
                decision = handler(conn, msg, body, now, **_injected(handler, deps))
            if on_commit is not None and written:
                on_commit(written)
        return decision
    except _NotAuthentic as exc:
        return quarantined(exc.reason, f"provider_id={sender}", sender)
    except Conflict:
        return quarantined(Quarantine.MESSAGE_ID_CONFLICT,
                           f"message_id={msg.message_id} was decided before with other content", sender,
                           authenticated=True)


class _NotAuthentic(Exception):
    def __init__(self, reason: Quarantine):
        self.reason = reason


_PROVIDER = select(providers.c.signing_secrets, providers.c.active).where(
    providers.c.provider_id == bindparam("provider_id"))


def _authenticate(conn: Connection, deps: Deps, provider_id: str, body: dict) -> None:
    """Raise _NotAuthentic unless the provider is known, active, and signed ``body``."""
    row = conn.execute(_PROVIDER, {"provider_id": provider_id}).first()
    if row is None or not row.active:
        raise _NotAuthentic(Quarantine.UNKNOWN_PROVIDER)
    if not signature_matches(body, deps.secrets.open(row.signing_secrets)):
        raise _NotAuthentic(Quarantine.BAD_SIGNATURE)


def quarantine_failure(deps: Deps, task: str, args: tuple | list, kwargs: dict, exc: BaseException,
                       attempts: int, *, now: datetime) -> dict:
    """Keep a message whose handling failed ``attempts`` times for an operator, and answer with that."""
    body = args[0] if len(args) == 1 else {"args": list(args)}
    decision = quarantine_message(deps.engine, task=task, reason=Quarantine.PROCESSING_FAILED,
                                  detail=f"{type(exc).__name__} on each of {attempts} attempts", body=body,
                                  now=now)
    return decision.model_dump(mode="json")
