"""Handler of ``matomete.line_change``: the order system tells of a change (異動) to a line,
effective at the message's ``occurred_at``.

It claims the message in the inbox (sender ``order-system``), locks the line, asks the matrix
(rules.line_change) and applies the outcome — one transaction:

* **terminate**: every active monthly-flat subscription of the line ends at the effective time
  (``end_cause`` line_change; the 1st-day rule applies through calendar.last_billable_month), its
  provider is told ``subscription_ended``; per-use purchases stand; every Passport ID of the line is
  deleted and the line terminated, so later purchases are refused ``LINE_TERMINATED``. A line that is
  already terminated stays as it was: a second termination is accepted and changes nothing.
  A subscription bought after the effective time (its purchase was decided before the change
  arrived) ends at its own purchase time: it bills its purchase month, the charge it already has.
* **continue**: restrictions, limits and subscriptions carry over. An item change may move the line
  to ``new_access_service``. A billing-number change bills the line's charges to
  ``new_billing_account`` from the effective month — or from the first open month when that one is
  already closed; earlier months stay where they were. It keeps the line's おまとめ representative,
  except ``individual_billing``, which clears it. Two changes effective in one month: the later
  effective time wins, whatever order they arrive in. On a terminated line such a change is still
  recorded (its last month may still bill) but revives nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import Connection, or_, select, update

from matomete_core.adapters.database import lock_line, share_month, upsert
from matomete_core.adapters.tables import charges, line_billing, lines, passport_ids, purchases
from matomete_core.calendar import billing_month, last_billable_month
from matomete_core.messages import BILLING_NUMBER_CHANGES, ChargeVoided, Decision, LineChange, SubscriptionEnded
from matomete_core.reasons import Reason
from matomete_core.rules.line_change import TERMINATE, changes_access_service, effect, keeps_representative
from matomete_core.rules.purchase import MONTHLY_FLAT
from matomete_core.service import inbox as inbox_svc, outbox
from matomete_core.service.months import first_open_month, is_open
from matomete_core.service.provider import billing_account_for

__all__ = ["SENDER", "handle_line_change"]

SENDER = "order-system"


def handle_line_change(conn: Connection, msg: LineChange, body: dict, now: datetime) -> Decision:
    claim = inbox_svc.claim(conn, sender=SENDER, message_id=msg.message_id, task=msg.task, body=body, now=now)
    if claim.replay is not None:
        return claim.replay
    line = lock_line(conn, msg.customer_id)
    if line is None:
        decision = Decision(message_id=msg.message_id, status="rejected", reason=Reason.UNKNOWN_CUSTOMER.value)
    else:
        if effect(msg.change, msg.customer_id_changed) == TERMINATE:
            _terminate(conn, line, msg.occurred_at, now)
        else:
            _carry_on(conn, msg)
        decision = Decision(message_id=msg.message_id, status="accepted")
    inbox_svc.record(conn, claim.inbox_id, decision)
    return decision


# ---- terminate ---------------------------------------------------------------------------------

def _terminate(conn: Connection, line: Mapping[str, Any], at: datetime, now: datetime) -> None:
    if line["terminated_at"] is not None:
        return
    customer_id, month = line["customer_id"], billing_month(at)
    share_month(conn, month)
    p = purchases.c
    active = conn.execute(select(purchases).where(
        p.customer_id == customer_id, p.price_type == MONTHLY_FLAT, p.cancelled_at.is_(None), p.end_cause.is_(None),
        or_(p.last_month.is_(None), p.last_month >= month)).order_by(p.application_number)).mappings().all()
    events: list[tuple[str, Any]] = []
    for sub in active:
        ended_at = max(at, sub["purchased_at"])
        last = last_billable_month(sub["purchased_at"], ended_at, sub["term_months"])
        conn.execute(update(purchases).where(p.application_number == sub["application_number"]).values(
            cancelled_at=ended_at, last_month=last, end_cause="line_change"))
        events += _void_charges_after(conn, sub["application_number"], last, now)
        events.append((outbox.provider_results(sub["provider_id"]), SubscriptionEnded(
            event_id=outbox.new_event_id(), application_number=str(sub["application_number"]),
            order_id=sub["order_id"], ended_at=ended_at, cause="line_change")))
    conn.execute(update(passport_ids).where(passport_ids.c.customer_id == customer_id,
                                            passport_ids.c.deleted_at.is_(None)).values(deleted_at=at))
    conn.execute(update(lines).where(lines.c.customer_id == customer_id).values(terminated_at=at))
    outbox.emit_many(conn, events, now=now)


def _void_charges_after(conn: Connection, number: int, last: str, now: datetime) -> list[tuple[str, Any]]:
    """Void the subscription's charges for months after its new last month that are still billed in
    an open month (charged late, before the change arrived); a closed month's charge stands."""
    c = charges.c
    rows = conn.execute(select(charges).where(c.application_number == number, c.service_month > last,
                                              c.voided_at.is_(None))).mappings().all()
    events = []
    for charge in rows:
        if not is_open(conn, charge["billing_month"]):
            continue
        conn.execute(update(charges).where(c.id == charge["id"]).values(voided_at=now))
        events.append((outbox.BILLING_RECORDS, ChargeVoided(
            event_id=outbox.new_event_id(), application_number=str(number), customer_id=charge["customer_id"],
            billing_account=billing_account_for(conn, charge["customer_id"], charge["billing_month"]),
            passport_id=charge["passport_id"], provider_id=charge["provider_id"], content_id=charge["content_id"],
            month=charge["billing_month"], quantity=charge["quantity"], amount=charge["amount"],
            late=charge["late"])))
    return events


# ---- continue ----------------------------------------------------------------------------------

def _carry_on(conn: Connection, msg: LineChange) -> None:
    if changes_access_service(msg.change) and msg.new_access_service is not None:
        conn.execute(update(lines).where(lines.c.customer_id == msg.customer_id).values(
            access_service=msg.new_access_service))
    if msg.change in BILLING_NUMBER_CHANGES:
        _change_billing_account(conn, msg)


def _change_billing_account(conn: Connection, msg: LineChange) -> None:
    month = first_open_month(conn, billing_month(msg.occurred_at))
    share_month(conn, month)
    lb = line_billing.c
    current = conn.execute(select(line_billing).where(lb.customer_id == msg.customer_id, lb.from_month <= month)
                           .order_by(lb.from_month.desc()).limit(1)).mappings().one()
    if current["from_month"] == month and current["effective_at"] is not None \
            and current["effective_at"] > msg.occurred_at:
        return  # a later change effective in the same month already stands
    representative = current["omatome_representative"] if keeps_representative(msg.change) else None
    upsert(conn, line_billing, [{
        "customer_id": msg.customer_id, "from_month": month, "billing_account": msg.new_billing_account,
        "omatome_representative": representative, "effective_at": msg.occurred_at}], ["customer_id", "from_month"])
