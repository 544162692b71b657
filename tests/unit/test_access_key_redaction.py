"""SPEC.md "Security": no access key, nor a message carrying one, is ever logged, stored or echoed —
not in any table, the database file, a log record, a decision, the quarantine or an outbound message."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy import select

from matomete_core.adapters.relay import relay
from matomete_core.adapters.tables import inbox, metadata, quarantine
from matomete_core.service import bus
from matomete_core.service.quarantine import list_quarantined
from matomete_core.testing import over_the_wire
from tests.unit.conftest import jst
from tests.unit.senders import ACCESS_KEY, Customer, OrderSystem

AT = jst("2026-08-10 12:00")
WRONG = "Wr0ng-K3y-zq8"
KEYS = (ACCESS_KEY, WRONG)


def send_every_kind_of_message_with_keys(deps, customer: Customer) -> list[dict]:
    decisions = []

    def send(task: str, message, now=AT):
        decisions.append(customer.send(task, message, now=now))

    for key in KEYS:
        # valid commands, accepted or refused
        send("matomete.set_limits", customer.message(AT, access_key=key, line_limit=9000))
        send("matomete.set_restriction", customer.message(AT, access_key=key, passport_id="user03",
                                                          restricted=True))
        send("matomete.set_restriction", customer.message(AT, access_key=key, passport_id="nobody99",
                                                          restricted=True))
        send("matomete.register_passport_id", customer.message(AT, access_key=key, passport_id="newid01"))
        send("matomete.update_registration", customer.message(AT, access_key=key, passport_id="user01"))
        stranger = Customer(deps, customer_id="CAF0000000404", access_key=key)
        send("matomete.set_limits", stranger.message(AT, line_limit=1))
        # invalid: an unknown field, a key too long, a limit as a string, no limit at all
        send("matomete.set_limits", customer.message(AT, access_key=key, line_limit=1, coupon="x"))
        send("matomete.set_limits", customer.message(AT, access_key=key * 40, line_limit=1))
        send("matomete.set_limits", customer.message(AT, access_key=key, line_limit="1"))
        send("matomete.set_limits", customer.message(AT, access_key=key))
        # a key where no key belongs, and an envelope of two arguments
        send("matomete.set_restriction", customer.message(AT, access_key=key, passport_id=None,
                                                          restricted=True, extra={"access_key": key}))
        decisions.append(bus.handle(deps, "matomete.set_limits",
                                    [over_the_wire(customer.message(AT, access_key=key, line_limit=1)), "more"],
                                    {}, now=AT))
        # the same message id with other content: a conflict
        first = customer.message(AT, access_key=key, passport_id="user01", restricted=True)
        send("matomete.set_restriction", first)
        send("matomete.set_restriction", {**first, "passport_id": "user02"})
        # a redelivery
        send("matomete.set_restriction", first)
    # enough wrong keys to be locked out, then the right one
    for n in range(5):
        send("matomete.set_restriction", customer.message(AT, access_key=WRONG, passport_id=None,
                                                          restricted=False))
    send("matomete.set_restriction", customer.message(AT, passport_id=None, restricted=False))
    return decisions


def every_stored_text(deps) -> str:
    parts = []
    with deps.engine.connect() as conn:
        for table in metadata.sorted_tables:
            parts += [repr(tuple(row)) for row in conn.execute(select(table))]
    return "\n".join(parts)


def database_bytes(deps) -> bytes:
    path = Path(deps.engine.url.database)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists())


def test_no_access_key_is_logged_stored_or_echoed(deps, caplog):
    caplog.set_level(logging.DEBUG)
    customer = Customer(deps)
    OrderSystem(deps).change("rename", AT)

    decisions = send_every_kind_of_message_with_keys(deps, customer)
    relay(deps.engine, deps.publisher, now=AT)

    # the messages were decided, refused and quarantined as expected …
    reasons = {d["reason"] for d in decisions}
    assert {None, "BAD_ACCESS_KEY", "UNKNOWN_CUSTOMER", "UNKNOWN_PASSPORT_ID", "REGISTRATION_CLOSED",
            "READ_ONLY", "INVALID_MESSAGE", "MESSAGE_ID_CONFLICT", "LOCKED_OUT"} <= reasons
    with deps.engine.connect() as conn:
        assert conn.execute(select(inbox)).first() is not None
        assert conn.execute(select(quarantine)).first() is not None
    # … and no key is anywhere
    texts = {
        "tables": every_stored_text(deps),
        "logs": "\n".join(f"{r.getMessage()} {r.__dict__!r} {r.exc_text or ''}" for r in caplog.records),
        "decisions": json.dumps(decisions, ensure_ascii=False),
        "quarantine": json.dumps(list_quarantined(deps.engine), ensure_ascii=False),
        "published": json.dumps(deps.publisher.published, ensure_ascii=False),
    }
    raw = database_bytes(deps)
    for key in KEYS:
        for where, text in texts.items():
            assert key not in text, f"the access key {key!r} is in the {where}"
        assert key.encode() not in raw, f"the access key {key!r} is in the database file"


def test_the_inbox_hashes_a_command_without_its_access_key(deps):
    customer = Customer(deps)
    message = customer.message(AT, passport_id="user01", restricted=True)
    customer.send("matomete.set_restriction", message, now=AT)
    from matomete_core.service.inbox import content_hash
    without_key = {k: v for k, v in message.items() if k != "access_key"}
    with deps.engine.connect() as conn:
        stored = conn.execute(select(inbox.c.content_hash).where(inbox.c.message_id == message["message_id"])).scalar()
    assert stored == content_hash(without_key)
