"""``matomete quarantine replay ID``: decide a quarantined message again, through the same path.

The quarantine keeps a message redacted (no signature, no access key), so what it stored can be
replayed as it is only when nothing was redacted from it and it was kept whole — an order-system
line change that was malformed, or any unsigned message that failed before a bug was fixed
(``PROCESSING_FAILED``). Anything else needs the corrected message (a provider's message signed
again by the provider, a self-service command with its access key): ``message=``.

Either way the message goes through ``bus.handle`` as a worker would hand it over — validation,
signature, the inbox — so a replay is exactly-once like any delivery: a message decided before
returns its first decision (``replayed: true``). A replay that is decided marks the entry replayed
with its decision; one that is quarantined again leaves the entry waiting (and the bus keeps the
new attempt, when it differs, as an entry of its own).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from matomete_core.adapters.tables import quarantine
from matomete_core.errors import NotFound, NotReplayable
from matomete_core.security import SECRET_FIELDS
from matomete_core.service import bus
from matomete_core.service.deps import Deps

__all__ = ["replay", "stored_message"]


def _redacted(value: Any, depth: int = 0) -> list[str]:
    """The secret fields that the quarantine replaced by ``***``, at any depth."""
    if depth > 20:
        return []
    if isinstance(value, dict):
        return [k for k, v in value.items() if k in SECRET_FIELDS and v == "***"] + \
               [name for v in value.values() for name in _redacted(v, depth + 1)]
    if isinstance(value, list):
        return [name for v in value for name in _redacted(v, depth + 1)]
    return []


def stored_message(entry: dict[str, Any]) -> dict[str, Any]:
    """The stored message of a quarantine entry, when it can be replayed as stored."""
    what = f"quarantined message {entry['id']} ({entry['task']}, {entry['reason']})"
    message = json.loads(entry["message"])
    if not isinstance(message, dict):
        raise NotReplayable(f"{what} is not a JSON object: replay it with --message FILE")
    if set(message) == {"truncated"}:
        raise NotReplayable(f"{what} was too long to keep whole: replay it with --message FILE")
    hidden = sorted(set(_redacted(message)))
    if hidden:
        raise NotReplayable(f"{what} was kept without its {', '.join(hidden)}: replay it with --message FILE, "
                            "the corrected message as its sender signs or sends it")
    return message


def replay(deps: Deps, quarantine_id: int, *, now: datetime, message: Any = None) -> dict[str, Any]:
    """Decide quarantine entry ``quarantine_id`` again — its stored message, or ``message`` — and
    return the decision."""
    with deps.engine.connect() as conn:
        entry = conn.execute(select(quarantine).where(quarantine.c.id == quarantine_id)).mappings().first()
    if entry is None:
        raise NotFound(f"no quarantined message {quarantine_id}")
    body = stored_message(dict(entry)) if message is None else message
    decision = bus.handle(deps, entry["task"], [body], {}, now=now)
    if decision["status"] != "quarantined":
        with deps.engine.begin() as conn:
            conn.execute(update(quarantine).where(quarantine.c.id == quarantine_id)
                         .values(replayed_at=now, replay_decision=decision))
    return decision
