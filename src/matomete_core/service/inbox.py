"""The inbox: exactly-once effects on an at-least-once broker.

Every message that can be decided claims (sender, message_id) in the same transaction as its
effects. A redelivery finds the claim and returns the first decision, ``replayed: true``; the same
id with other content is a conflict, for quarantine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import Connection, Update, bindparam, select, update

from matomete_core.adapters.database import insert_ignore
from matomete_core.adapters.tables import inbox
from matomete_core.messages import Decision
from matomete_core.security import canonical_bytes


def content_hash(body: Mapping[str, Any], *, canonical: bytes | None = None) -> str:
    """Hash of the message's content, without its signature (which a secret rotation may change);
    ``canonical``: the body's canonical_bytes, when the caller has them already."""
    return hashlib.sha256(canonical_bytes(body) if canonical is None else canonical).hexdigest()


class Conflict(Exception):
    """The message id was decided before with other content: for quarantine, not a decision."""


@dataclass(frozen=True)
class Claim:
    inbox_id: int | None = None
    replay: Decision | None = None


def claim(conn: Connection, *, sender: str, message_id: str, task: str, body: Mapping[str, Any],
          now: datetime, order_id: str | None = None) -> Claim:
    """A new claim (its inbox row), or the first decision to replay; raises Conflict."""
    digest = content_hash(body)
    new_id = insert_ignore(conn, inbox, sender=sender, message_id=message_id, task=task,
                           content_hash=digest, order_id=order_id, received_at=now)
    if new_id is not None:
        return Claim(inbox_id=new_id)
    row = conn.execute(select(inbox.c.content_hash, inbox.c.task, inbox.c.decision).where(
        inbox.c.sender == sender, inbox.c.message_id == message_id)).one()
    if row.content_hash != digest or row.task != task:
        raise Conflict()
    return Claim(replay=Decision.model_validate(row.decision).model_copy(update={"replayed": True}))


_RECORD = update(inbox).where(inbox.c.id == bindparam("inbox_id")).values(decision=bindparam("decision"))


def record(conn: Connection, inbox_id: int, decision: Decision) -> None:
    conn.execute(*recording(inbox_id, decision))


def recording(inbox_id: int, decision: Decision) -> tuple[Update, dict[str, Any]]:
    """record's statement, to run with others in the same transaction (``database.pipelined``)."""
    return _RECORD, {"inbox_id": inbox_id, "decision": decision.model_dump(mode="json")}
