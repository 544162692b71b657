"""Handlers of the customer's self-service commands: ``matomete.set_restriction``,
``matomete.set_limits``, ``matomete.register_passport_id`` and ``matomete.update_registration``.

Each one claims the message in the inbox (sender: the customer ID), locks the line, checks the
access key (rules.customer), asks its rule, applies the outcome and records the decision — one
transaction. A wrong key is a rejection whose failure count (and lock-out) is committed with it;
a redelivery replays the first decision and counts nothing.

The access key never leaves this module except into ``access_key_matches`` (scrypt, constant
time). The inbox keeps a hash of the message *without* its access key: nothing derived from the key
is stored besides the line's salted scrypt hash. So a redelivery with another key is the same
content and replays the first decision — decided on the first key, it neither grants nor reveals
anything, and it is no extra guess.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, select, update

from matomete_core.adapters.database import lock_line
from matomete_core.adapters.tables import lines, passport_ids
from matomete_core.config import Settings
from matomete_core.messages import Decision, RegisterPassportId, SetLimits, SetRestriction, UpdateRegistration
from matomete_core.reasons import Reason
from matomete_core.rules.customer import REGISTER, UPDATE, KeyState, authenticate, decide_registration
from matomete_core.rules.limits import decide_limits
from matomete_core.rules.restriction import decide_restriction
from matomete_core.rules.verdict import Verdict
from matomete_core.security import access_key_matches
from matomete_core.service import inbox as inbox_svc

__all__ = ["handle_set_restriction", "handle_set_limits", "handle_register_passport_id",
           "handle_update_registration", "without_access_key"]

Decide = Callable[[Connection, Mapping[str, Any]], Verdict]  # (conn, the locked line) -> verdict


def without_access_key(body: Mapping[str, Any]) -> dict[str, Any]:
    """The message as the inbox hashes it: everything but the access key."""
    return {k: v for k, v in body.items() if k != "access_key"}


def _command(conn: Connection, msg: Any, body: dict, now: datetime, decide: Decide) -> Decision:
    claim = inbox_svc.claim(conn, sender=msg.customer_id, message_id=msg.message_id, task=msg.task,
                            body=without_access_key(body), now=now)
    if claim.replay is not None:
        return claim.replay
    verdict = _authenticated(conn, msg, now, decide)
    decision = Decision(message_id=msg.message_id, status="accepted") if verdict.accepted else \
        Decision(message_id=msg.message_id, status="rejected", reason=verdict.reason.value)
    inbox_svc.record(conn, claim.inbox_id, decision)
    return decision


def _authenticated(conn: Connection, msg: Any, now: datetime, decide: Decide) -> Verdict:
    line = lock_line(conn, msg.customer_id)
    if line is None:
        return Verdict.refuse(Reason.UNKNOWN_CUSTOMER, f"customer={msg.customer_id}")
    state = KeyState(line["failed_key_attempts"], line["locked_until"])
    access = authenticate(state, lambda: access_key_matches(msg.access_key.get_secret_value(),
                                                            line["access_key_hash"]), now=now)
    if access.state != state:
        conn.execute(update(lines).where(lines.c.customer_id == msg.customer_id).values(
            failed_key_attempts=access.state.failed_attempts, locked_until=access.state.locked_until))
    if not access.verdict.accepted:
        return access.verdict
    return decide(conn, line)


def _own_limits(conn: Connection, customer_id: str) -> dict[str, int | None]:
    """The line's Passport IDs (not deleted) and their own limits."""
    return dict(conn.execute(select(passport_ids.c.passport_id, passport_ids.c.limit).where(
        passport_ids.c.customer_id == customer_id, passport_ids.c.deleted_at.is_(None))).all())


# ---- restriction -------------------------------------------------------------------------------

def handle_set_restriction(conn: Connection, msg: SetRestriction, body: dict, now: datetime) -> Decision:
    def decide(conn: Connection, line: Mapping[str, Any]) -> Verdict:
        verdict = decide_restriction(customer_id=msg.customer_id, terminated=line["terminated_at"] is not None,
                                     line_ids=_own_limits(conn, msg.customer_id), passport_id=msg.passport_id)
        if verdict.accepted and msg.passport_id is None:
            conn.execute(update(lines).where(lines.c.customer_id == msg.customer_id).values(
                restricted=msg.restricted))
        elif verdict.accepted:
            conn.execute(update(passport_ids).where(passport_ids.c.passport_id == msg.passport_id,
                                                    passport_ids.c.customer_id == msg.customer_id
                                                    ).values(restricted=msg.restricted))
        return verdict

    return _command(conn, msg, body, now, decide)


# ---- limits ------------------------------------------------------------------------------------

def handle_set_limits(conn: Connection, msg: SetLimits, body: dict, now: datetime, *,
                      settings: Settings) -> Decision:
    def decide(conn: Connection, line: Mapping[str, Any]) -> Verdict:
        verdict = decide_limits(customer_id=msg.customer_id, terminated=line["terminated_at"] is not None,
                                line_limit=line["line_limit"], own_limits=_own_limits(conn, msg.customer_id),
                                new_line_limit=msg.line_limit, passport_limits=msg.passport_limits,
                                maximum=settings.max_line_limit)
        if not verdict.accepted:
            return verdict
        if msg.line_limit is not None:
            conn.execute(update(lines).where(lines.c.customer_id == msg.customer_id).values(
                line_limit=msg.line_limit))
        for passport_id, limit in (msg.passport_limits or {}).items():
            conn.execute(update(passport_ids).where(passport_ids.c.passport_id == passport_id,
                                                    passport_ids.c.customer_id == msg.customer_id
                                                    ).values(limit=limit))
        return verdict

    return _command(conn, msg, body, now, decide)


# ---- registration (closed since December 2024) -------------------------------------------------

def handle_register_passport_id(conn: Connection, msg: RegisterPassportId, body: dict, now: datetime, *,
                                settings: Settings) -> Decision:
    return _command(conn, msg, body, now, lambda _conn, _line: decide_registration(
        REGISTER, at=msg.occurred_at, cutoff=settings.registration_cutoff))


def handle_update_registration(conn: Connection, msg: UpdateRegistration, body: dict, now: datetime, *,
                               settings: Settings) -> Decision:
    return _command(conn, msg, body, now, lambda _conn, _line: decide_registration(
        UPDATE, at=msg.occurred_at, cutoff=settings.registration_cutoff))
