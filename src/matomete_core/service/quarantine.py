"""Quarantine: what cannot be decided is kept, redacted of secrets, for an operator."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from matomete_core.adapters.database import insert_ignore
from matomete_core.adapters.tables import quarantine
from matomete_core.messages import MESSAGE_ID, Decision, DecisionEvent
from matomete_core.reasons import Quarantine
from matomete_core.security import redact
from matomete_core.service import outbox

log = logging.getLogger(__name__)
MAX_STORED = 64 * 1024


def _storable(text: str) -> str:
    """``text`` with every lone surrogate and NUL replaced by U+FFFD. JSON can carry both
    (``"\\ud800"``, ``"\\u0000"``, in a value or in a key that a validation detail names): Python
    decodes a lone surrogate into a str no database driver encodes as UTF-8, and PostgreSQL
    refuses NUL in text."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


def _safe_json(body: Any) -> str:
    try:
        text = json.dumps(redact(body), ensure_ascii=False, sort_keys=True, default=repr)
    except (ValueError, RecursionError):
        text = json.dumps(repr(type(body)))
    text = _storable(text)
    return text if len(text) <= MAX_STORED else json.dumps({"truncated": text[:MAX_STORED]}, ensure_ascii=False)


def readable(body: bytes | str) -> Any:
    """A body as it arrived: its JSON when it is JSON — so that quarantine_message can redact its
    secrets — else its text."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def message_id_of(body: Any) -> str | None:
    """The body's message_id when it is a well-formed one; never an arbitrary string."""
    mid = body.get("message_id") if isinstance(body, dict) else None
    return mid if isinstance(mid, str) and re.fullmatch(MESSAGE_ID, mid) else None


def quarantine_message(engine: Engine, *, task: str, reason: Quarantine, detail: str, body: Any,
                       now: datetime, sender: str | None = None, tell_provider: bool = False) -> Decision:
    """Keep the message, redacted; ``tell_provider`` (an authenticated sender) also queues the
    decision on its ``provider-results`` queue."""
    stored, detail = _safe_json(body), _storable(detail)
    mid = message_id_of(body)
    decision = Decision(message_id=mid, status="quarantined", reason=reason.value)
    with engine.begin() as conn:
        new = insert_ignore(conn, quarantine, task=task, reason=reason.value, detail=detail[:4000],
                            sender=sender, message_id=mid, received_at=now, message=stored,
                            body_hash=hashlib.sha256(f"{stored}\x00{detail}".encode()).hexdigest())
        if tell_provider and sender is not None and new is not None:
            event = DecisionEvent(event_id=outbox.new_event_id(), **decision.model_dump())
            outbox.emit(conn, outbox.provider_results(sender), event, now=now)
    log.warning("message quarantined", extra={"task": task, "reason": reason.value, "message_id": mid})
    return decision


def list_quarantined(engine: Engine, *, replayed: bool = False) -> list[dict[str, Any]]:
    """The messages waiting for an operator; ``replayed`` adds those replayed already, each with
    ``replayed_at`` and ``replay_decision``."""
    stmt = select(quarantine).order_by(quarantine.c.id)
    with engine.connect() as conn:
        rows = conn.execute(stmt if replayed else stmt.where(quarantine.c.replayed_at.is_(None))).mappings().all()
    return [{"id": r["id"], "task": r["task"], "reason": r["reason"], "detail": r["detail"],
             "received_at": r["received_at"].isoformat(), "message": json.loads(r["message"]),
             **({"replayed_at": r["replayed_at"] and r["replayed_at"].isoformat(),
                 "replay_decision": r["replay_decision"]} if replayed else {})} for r in rows]
