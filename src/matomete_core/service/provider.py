"""Handlers of the provider path: ``matomete.purchase`` and ``matomete.cancel``, and held cancels.

Each handler claims the message in the inbox, serializes on the provider's order and on the line,
asks the rule, records the outcome with its outbound events, and commits — one transaction.
"""

from __future__ import annotations

from datetime import datetime

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Select, and_, bindparam, delete, exists, insert, literal, select, update

from matomete_core.adapters.database import (
    insert_ignore, lock_line, lock_order, locking_line, locking_order, pipelined, share_month)
from matomete_core.adapters.tables import (
    billing_months, charges, contents, held_cancels, inbox, line_billing, passport_ids, purchases)
from matomete_core import logcontext
from matomete_core.calendar import billing_month, last_billable_month
from matomete_core.messages import Cancel, ChargeRecord, ChargeVoided, Decision, DecisionEvent, Purchase
from matomete_core.reasons import Reason
from matomete_core.rules.cancel import Order, decide_cancel
from matomete_core.rules.purchase import (
    MONTHLY_FLAT, Content, Holder, Usage, decide_purchase, months_billed_at_purchase, term_last_month)
from matomete_core.service import billing, inbox as inbox_svc, outbox
from matomete_core.service.months import first_open_month, is_open

__all__ = ["handle_purchase", "handle_cancel", "expire_held_cancels", "billing_account_for", "release_held_cancels",
           "purchase_row", "charge"]


def _event(decision: Decision) -> DecisionEvent:
    return DecisionEvent(event_id=outbox.new_event_id(), **decision.model_dump())


def _finish(conn: Connection, provider_id: str, inbox_id: int, decision: Decision, now: datetime,
            events: list[tuple[str, BaseModel]] | None = None) -> Decision:
    """Record the decision in the inbox, and queue its outbound events and the decision itself."""
    pipelined(conn, inbox_svc.recording(inbox_id, decision), *outbox.emitting(
        conn.dialect.name, [*(events or []), (outbox.provider_results(provider_id), _event(decision))], now=now))
    return decision


def billing_account_for(conn: Connection, customer_id: str, month: str) -> str:
    return conn.execute(_billing_account(customer_id, month)).scalar_one()


def _billing_account(customer_id, month) -> Select:  # noqa: ANN001 — values or columns
    return select(line_billing.c.billing_account).where(
        line_billing.c.customer_id == customer_id, line_billing.c.from_month <= month
    ).order_by(line_billing.c.from_month.desc()).limit(1)


# ---- purchase ----------------------------------------------------------------------------------
# The hot path. After the inbox claim, one round trip (database.pipelined) takes the order's lock and
# the month's and reads everything the order lock protects; one locks the line and reads the
# Passport ID and the line's usage as they stand under that lock — each built once (``_prepared``);
# then the purchase, its charge, and the inbox record with the outbox rows.

def handle_purchase(conn: Connection, msg: Purchase, body: dict, now: datetime) -> Decision:
    claim = inbox_svc.claim(conn, sender=msg.provider_id, message_id=msg.message_id, task=msg.task,
                            body=body, now=now, order_id=msg.order_id)
    if claim.replay is not None:
        return claim.replay
    start = billing_month(msg.occurred_at)
    *_, [order] = pipelined(conn, *locking_order(conn.dialect.name, msg.provider_id, msg.order_id, share_month=start),
                            (_prepared()["order"], {"provider_id": msg.provider_id, "order_id": msg.order_id,
                                                    "content_id": msg.content_id, "passport_id": msg.passport_id,
                                                    "month": start}))
    decision, number, events = _decide_purchase(conn, msg, order, start, now)
    _finish(conn, msg.provider_id, claim.inbox_id, decision, now, events)
    if order.held:
        release_held_cancels(conn, msg.provider_id, msg.order_id, number, now)
    return decision


@lru_cache(maxsize=1)
def _prepared() -> dict[str, Select]:
    """The purchase path's reads, built once with bound parameters."""
    c, p = contents.c, purchases.c
    provider_id, order_id = bindparam("provider_id"), bindparam("order_id")
    one = select(literal(1).label("one")).subquery()
    order = select(
        exists().where(p.provider_id == provider_id, p.order_id == order_id).label("taken"),
        exists().where(held_cancels.c.provider_id == provider_id, held_cancels.c.order_id == order_id).label("held"),
        exists().where(billing_months.c.month == bindparam("month")).label("month_shut"),
        select(passport_ids.c.customer_id).where(passport_ids.c.passport_id == bindparam("passport_id"))
        .scalar_subquery().label("customer_id"),
        c.provider_id, c.content_id, c.name, c.price_type, c.unit_price, c.term_months,
    ).select_from(one.outerjoin(contents, and_(c.provider_id == provider_id, c.content_id == bindparam("content_id"))))
    pid = passport_ids.c
    holder = select(pid.status, pid.deleted_at, pid.restricted, pid.limit,
                    _billing_account(pid.customer_id, bindparam("month")).scalar_subquery().label("billing_account")
                    ).where(pid.passport_id == bindparam("passport_id"))
    return {"order": order, "holder": holder}


def _decide_purchase(conn: Connection, msg: Purchase, order, start: str,  # noqa: ANN001
                     now: datetime) -> tuple[Decision, int | None, list]:
    def refuse(reason: Reason) -> tuple[Decision, None, list]:
        return Decision(message_id=msg.message_id, status="rejected", reason=reason.value), None, []

    if order.taken:
        return refuse(Reason.DUPLICATE_ORDER)
    content = None if order.content_id is None else Content(
        order.provider_id, order.content_id, order.name, order.price_type, order.unit_price, order.term_months)
    month = start
    if order.month_shut:
        month = first_open_month(conn, start)
        share_month(conn, month)
    holder, account, by_passport = _load_holder(conn, msg.passport_id, order.customer_id, month)
    plan: list[str] = []

    def usage() -> Usage:
        assert content is not None and holder is not None
        key = billing.dedupe_key(msg.passport_id, msg.provider_id, msg.content_id)
        if content.price_type == MONTHLY_FLAT:
            subscribed = conn.execute(select(purchases.c.application_number).where(
                purchases.c.dedupe_key == key, purchases.c.cancelled_at.is_(None),
                (purchases.c.last_month.is_(None)) | (purchases.c.last_month >= month)).limit(1)).first()
            last = term_last_month(start, content.term_months)
            plan.extend(m for m in months_billed_at_purchase(start, month, last)
                        if not billing.month_is_billed_for(conn, key, m))
            added = content.unit_price * len(plan)
            if start < month and (last is None or last >= month) and not billing.month_is_billed_for(conn, key, month):
                added += content.unit_price  # the first open month's own renewal comes due too
        else:
            subscribed, added = None, content.unit_price * msg.quantity
        return Usage(already_subscribed=subscribed is not None, passport_usage=by_passport.get(msg.passport_id, 0),
                     line_usage=sum(by_passport.values()), added=added)

    verdict = decide_purchase(provider_id=msg.provider_id, content_id=msg.content_id, quantity=msg.quantity,
                              unit_price=msg.unit_price, content=content, holder=holder, usage=usage)
    if not verdict.accepted:
        return refuse(verdict.reason)
    assert content is not None and holder is not None and account is not None
    number, events = _accept(conn, msg, content, holder, account, start, month, plan)
    return Decision(message_id=msg.message_id, status="accepted", application_number=str(number),
                    billing_month=month), number, events


def _load_holder(conn: Connection, passport_id: str, customer_id: str | None,
                 month: str) -> tuple[Holder | None, str | None, dict[str, int]]:
    """The Passport ID and its line, read under the line's lock; the line's billing account; and the
    line's usage in ``month`` per Passport ID."""
    if customer_id is None:
        return None, None, {}
    logcontext.bind(customer_id=customer_id)
    [line], [pid], usage = pipelined(conn, locking_line(conn.dialect.name, customer_id),
                                     (_prepared()["holder"], {"passport_id": passport_id, "month": month}),
                                     billing.reading_line_usage(month, customer_id))
    holder = Holder(passport_id=passport_id, customer_id=customer_id, status=pid.status,
                    deleted=pid.deleted_at is not None, restricted=pid.restricted, limit=pid.limit,
                    access_service=line.access_service, line_terminated=line.terminated_at is not None,
                    line_restricted=line.restricted, line_limit=line.line_limit)
    return holder, pid.billing_account, billing.per_passport(usage)


_NEW_PURCHASE = insert(purchases).returning(purchases.c.application_number)


def purchase_row(msg: Purchase, content: Content, customer_id: str, start: str) -> dict[str, Any]:
    """The ``purchases`` row of an accepted purchase (its application number comes from the insert)."""
    monthly = content.price_type == MONTHLY_FLAT
    return dict(provider_id=msg.provider_id, order_id=msg.order_id, passport_id=msg.passport_id,
                customer_id=customer_id, content_id=msg.content_id, price_type=content.price_type,
                unit_price=content.unit_price, quantity=msg.quantity, purchased_at=msg.occurred_at, start_month=start,
                last_month=term_last_month(start, content.term_months) if monthly else start,
                term_months=content.term_months,
                dedupe_key=billing.dedupe_key(msg.passport_id, msg.provider_id, msg.content_id) if monthly else None)


def charge(purchase: dict[str, Any], number: int, account: str, service_month: str,
           month: str) -> tuple[dict[str, Any], ChargeRecord]:
    """The ``charges`` row for ``service_month`` of purchase row ``purchase``, billed in ``month``,
    and its billing record."""
    amount = purchase["unit_price"] * purchase["quantity"]
    row = dict(application_number=number, customer_id=purchase["customer_id"], passport_id=purchase["passport_id"],
               provider_id=purchase["provider_id"], content_id=purchase["content_id"], service_month=service_month,
               billing_month=month, quantity=purchase["quantity"], amount=amount, late=service_month != month,
               dedupe_key=purchase["dedupe_key"])
    record = ChargeRecord(event_id=outbox.new_event_id(), application_number=str(number),
                          customer_id=purchase["customer_id"], billing_account=account,
                          passport_id=purchase["passport_id"], provider_id=purchase["provider_id"],
                          content_id=purchase["content_id"], month=month, quantity=purchase["quantity"],
                          amount=amount, late=service_month != month)
    return row, record


def _accept(conn: Connection, msg: Purchase, content: Content, holder: Holder, account: str, start: str,
            month: str, plan: list[str]) -> tuple[int, list[tuple[str, BaseModel]]]:
    purchase = purchase_row(msg, content, holder.customer_id, start)
    [[(number,)]] = pipelined(conn, (_NEW_PURCHASE, purchase))
    events: list[tuple[str, BaseModel]] = []
    for service_month in (plan if content.price_type == MONTHLY_FLAT else [start]):
        row, record = charge(purchase, number, account, service_month, month)
        if insert_ignore(conn, charges, **row) is not None:
            events.append((outbox.BILLING_RECORDS, record))
    return number, events


# ---- cancel ------------------------------------------------------------------------------------

def handle_cancel(conn: Connection, msg: Cancel, body: dict, now: datetime) -> Decision:
    claim = inbox_svc.claim(conn, sender=msg.provider_id, message_id=msg.message_id, task=msg.task,
                            body=body, now=now, order_id=msg.order_id)
    if claim.replay is not None:
        return claim.replay
    lock_order(conn, msg.provider_id, msg.order_id)
    row = _order_row(conn, msg.provider_id, msg.order_id)
    if row is None:
        if _purchase_was_refused(conn, msg.provider_id, msg.order_id):
            decision = Decision(message_id=msg.message_id, status="rejected", reason=Reason.UNKNOWN_ORDER.value)
        else:
            conn.execute(insert(held_cancels).values(
                inbox_id=claim.inbox_id, provider_id=msg.provider_id, order_id=msg.order_id,
                message_id=msg.message_id, occurred_at=msg.occurred_at, received_at=now))
            decision = Decision(message_id=msg.message_id, status="held")
        return _finish(conn, msg.provider_id, claim.inbox_id, decision, now)
    decision = _apply_cancel(conn, row, msg.message_id, msg.occurred_at, now)
    return _finish(conn, msg.provider_id, claim.inbox_id, decision, now)


def _order_row(conn: Connection, provider_id: str, order_id: str):  # noqa: ANN202
    return conn.execute(select(purchases).where(purchases.c.provider_id == provider_id,
                                                purchases.c.order_id == order_id)).mappings().first()


def _purchase_was_refused(conn: Connection, provider_id: str, order_id: str) -> bool:
    rows = conn.execute(select(inbox.c.decision).where(
        inbox.c.sender == provider_id, inbox.c.order_id == order_id, inbox.c.task == Purchase.task)).scalars()
    return any(d is not None and d.get("status") == "rejected" for d in rows)


def _apply_cancel(conn: Connection, row, message_id: str, at: datetime, now: datetime) -> Decision:  # noqa: ANN001
    lock_line(conn, row["customer_id"])
    logcontext.bind(customer_id=row["customer_id"])
    number = row["application_number"]
    charge = None
    if row["price_type"] != MONTHLY_FLAT:
        charge = conn.execute(select(charges).where(charges.c.application_number == number)).mappings().one()
        share_month(conn, charge["billing_month"])
    order = Order(application_number=number, price_type=row["price_type"], purchased_at=row["purchased_at"],
                  cancelled=row["cancelled_at"] is not None,
                  charge_month_open=charge is not None and is_open(conn, charge["billing_month"]))
    verdict = decide_cancel(order, at=at)
    if not verdict.accepted:
        return Decision(message_id=message_id, status="rejected", reason=verdict.reason.value,
                        application_number=str(number))
    if charge is None:
        last = last_billable_month(row["purchased_at"], at, row["term_months"])
        conn.execute(update(purchases).where(purchases.c.application_number == number).values(
            cancelled_at=at, last_month=last, end_cause="cancel"))
    else:
        conn.execute(update(purchases).where(purchases.c.application_number == number).values(
            cancelled_at=at, end_cause="cancel"))
        conn.execute(update(charges).where(charges.c.id == charge["id"]).values(voided_at=now))
        outbox.emit(conn, outbox.BILLING_RECORDS, ChargeVoided(
            event_id=outbox.new_event_id(), application_number=str(number), customer_id=charge["customer_id"],
            billing_account=billing_account_for(conn, charge["customer_id"], charge["billing_month"]),
            passport_id=charge["passport_id"], provider_id=charge["provider_id"], content_id=charge["content_id"],
            month=charge["billing_month"], quantity=charge["quantity"], amount=charge["amount"],
            late=charge["late"]), now=now)
    return Decision(message_id=message_id, status="accepted", application_number=str(number))


# ---- held cancels ------------------------------------------------------------------------------

def _held(conn: Connection, provider_id: str, order_id: str):  # noqa: ANN202
    return conn.execute(select(held_cancels).where(
        held_cancels.c.provider_id == provider_id, held_cancels.c.order_id == order_id
    ).order_by(held_cancels.c.id)).mappings().all()


def release_held_cancels(conn: Connection, provider_id: str, order_id: str, number: int | None,
                          now: datetime) -> None:
    """Decide the cancels that waited for this order: applied if it was accepted, else UNKNOWN_ORDER."""
    for held in _held(conn, provider_id, order_id):
        if number is None:
            decision = Decision(message_id=held["message_id"], status="rejected", reason=Reason.UNKNOWN_ORDER.value)
        else:
            row = _order_row(conn, provider_id, order_id)
            decision = _apply_cancel(conn, row, held["message_id"], held["occurred_at"], now)
        conn.execute(delete(held_cancels).where(held_cancels.c.id == held["id"]))
        _finish(conn, provider_id, held["inbox_id"], decision, now)


def expire_held_cancels(conn: Connection, *, now: datetime, hold) -> int:  # noqa: ANN001
    """Refuse ``UNKNOWN_ORDER`` every cancel held longer than ``hold`` without its purchase."""
    expired = conn.execute(select(held_cancels.c.provider_id, held_cancels.c.order_id).where(
        held_cancels.c.received_at <= now - hold).distinct()).all()
    for provider_id, order_id in expired:
        lock_order(conn, provider_id, order_id)
        for held in _held(conn, provider_id, order_id):
            if held["received_at"] > now - hold:
                continue
            decision = Decision(message_id=held["message_id"], status="rejected", reason=Reason.UNKNOWN_ORDER.value)
            conn.execute(delete(held_cancels).where(held_cancels.c.id == held["id"]))
            _finish(conn, provider_id, held["inbox_id"], decision, now)
    return len(expired)
