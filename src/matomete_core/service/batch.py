"""Micro-batches: many provider purchases decided in one transaction with set-based SQL.

    decide_batch(deps, messages, now=..., on_commit=...) -> the decisions, in the messages' order

The same rules as one message at a time (``rules.purchase.decide_purchase``, asked in order with
what the batch has accepted so far counted in), the same locks (each order, the billing month
shared, each line ``FOR UPDATE`` — taken for the whole batch in a fixed order so two batches cannot
deadlock), the same rows (purchases, charges, inbox, outbox) — but a dozen statements and one
commit for the whole batch instead of a dozen and a commit for each message.

A *run* is a stretch of consecutive purchases that parse, authenticate and do not share a message
id or an order with one another. Everything else — cancels, anything malformed or unauthentic — is
handed to the one-message path (``bus.handle``) where it falls, so its outcome is exactly that
path's. Two kinds found inside a run go to that path right after the run commits: a redelivery
(which replays its first decision) and a monthly-flat purchase dated in a closed month (which bills
closed months late). A run whose transaction fails for a reason that is not transient (a bug, a
unique key taken by a concurrent worker) is decided again message by message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import (
    BindParameter, Connection, Select, bindparam, func, literal, literal_column, select, text, true, union_all)

from matomete_core.adapters.database import (
    among, inserting, insert_rows, is_transient, list_param, locking_keys, pipelined)
from matomete_core.adapters.tables import (
    billing_months, charges, contents, held_cancels, inbox, line_billing, lines, passport_ids, providers, purchases)
from matomete_core.calendar import add_months, billing_month
from matomete_core.messages import Decision, DecisionEvent, Purchase, parse
from matomete_core.reasons import Reason
from matomete_core.rules.purchase import (
    MONTHLY_FLAT, Content, Holder, Usage, decide_purchase, term_last_month)
from matomete_core.security import SecretBox, canonical_bytes, signature_matches
from matomete_core.service import billing, bus, outbox
from matomete_core.service.deps import Deps
from matomete_core.service.inbox import content_hash
from matomete_core.service.provider import charge, purchase_row, release_held_cancels

__all__ = ["Inbound", "decide_batch"]

log = logging.getLogger(__name__)

Inbound = tuple[str, Sequence[Any], dict[str, Any]]  # (task name, args, kwargs), as a broker delivers them
OnCommit = Callable[[list[outbox.Written]], None] | None


@dataclass
class _Item:
    index: int
    msg: Purchase
    body: dict
    start: str = ""
    month: str = ""
    customer_id: str | None = None
    decision: Decision | None = None
    number: int | None = None
    deferred: bool = False
    plan: list[str] = field(default_factory=list)  # the service months its charges bill
    canonical: bytes = b""  # the body as signed (security.canonical_bytes), for the signature and the inbox


@dataclass
class _Run:
    items: list[_Item] = field(default_factory=list)
    keys: set[tuple[str, str]] = field(default_factory=set)

    def admits(self, msg: Purchase) -> bool:
        return not ({(msg.provider_id, msg.message_id), (msg.provider_id, "order:" + msg.order_id)} & self.keys)

    def add(self, item: _Item) -> None:
        self.items.append(item)
        self.keys |= {(item.msg.provider_id, item.msg.message_id), (item.msg.provider_id, "order:" + item.msg.order_id)}


def decide_batch(deps: Deps, messages: Sequence[Inbound], *, now: datetime, on_commit: OnCommit = None) -> list[dict]:
    """Decide ``messages`` in order; transient database errors propagate (retry the batch)."""
    decisions: list[dict | None] = [None] * len(messages)
    run = _Run()

    def flush() -> None:
        nonlocal run
        if run.items:
            for index, decision in _decide_run(deps, run.items, now, on_commit):
                decisions[index] = decision
        run = _Run()

    for index, (task, args, kwargs) in enumerate(messages):
        msg, body = _purchase(task, args, kwargs, now)
        if msg is None:
            flush()
            decisions[index] = bus.handle(deps, task, args, kwargs, now=now, on_commit=on_commit)
            continue
        if not run.admits(msg):
            flush()
        run.add(_Item(index, msg, body))
    flush()
    return decisions  # type: ignore[return-value]


def _purchase(task: str, args: Sequence[Any], kwargs: dict, now: datetime) -> tuple[Purchase | None, dict]:
    """The purchase, if it is a well-formed one (its signature is checked in the run's transaction)."""
    if task != Purchase.task or len(args) != 1 or kwargs or not isinstance(args[0], dict):
        return None, {}
    body = args[0]
    try:
        return parse(Purchase, body, now=now), body  # type: ignore[return-value]
    except (ValidationError, ValueError, TypeError, RecursionError):
        return None, {}


def _decide_run(deps: Deps, items: list[_Item], now: datetime, on_commit: OnCommit) -> list[tuple[int, dict]]:
    try:
        with outbox.track() as written:
            with deps.engine.begin() as conn:
                _Decider(conn, items, now, deps.secrets).run()
            if on_commit is not None and written:
                on_commit(written)
    except Exception as exc:
        if is_transient(exc):
            raise
        log.warning("a batch run failed (%s); deciding its %d messages one by one", type(exc).__name__, len(items),
                    exc_info=True)
        return [(i.index, bus.handle(deps, i.msg.task, [i.body], {}, now=now, on_commit=on_commit)) for i in items]
    out = []
    for item in items:
        if item.decision is None or item.deferred:  # a redelivery, or not for the batch: the one-message path
            out.append((item.index, bus.handle(deps, item.msg.task, [item.body], {}, now=now, on_commit=on_commit)))
        else:
            decision = item.decision.model_dump(mode="json")
            log.info("decided", extra={"task": item.msg.task, "message_id": item.msg.message_id,
                                       "status": decision["status"], "reason": decision["reason"],
                                       "application_number": decision["application_number"]})
            out.append((item.index, decision))
    return out


# For this transaction only, in one round trip. Lists of a different length each batch: a generic
# plan guesses them (and the month's rows) wrong and scans, a plan for the actual lists stays an
# index lookup. And no parallel workers: once the tables hold a few hundred thousand rows the
# planner prices the batch's lookups (a few hundred index probes, under a millisecond) high enough
# to gather them from parallel workers, whose start-up alone took ~13 ms a batch (EXPLAIN ANALYZE,
# 200,000 purchases preloaded) and made a decision 21 % dearer than on small tables.
_PLAN_FOR_THE_BATCH = text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true) AS plans,"
                           " set_config('max_parallel_workers_per_gather', '0', true) AS workers")


@lru_cache(maxsize=2)
def _reads(arrays: bool) -> dict[str, Select]:
    """The batch's reads, built once for each kind of list parameter (``list_param``)."""
    p, h, ib, pid, lb = purchases.c, held_cancels.c, inbox.c, passport_ids.c, line_billing.c

    def listed(name: str, column: Any) -> BindParameter:
        return list_param(name, column.type, arrays=arrays)
    providers_, orders = listed("providers", p.provider_id), listed("orders", p.order_id)
    ids = listed("ids", ib.message_id)
    passports, customers = listed("passports", pid.passport_id), listed("customers", lines.c.customer_id)

    def each(kind: str, keys: list[tuple[Any, BindParameter]], shown: tuple[Any, Any]) -> Select:
        """(kind, *shown) of the rows whose key columns hold one item's values (``keys``: column,
        values — lists in step, one value per item)."""
        if arrays:  # PostgreSQL: one index probe per item, whatever the statistics
            # say (see _usage); a join would be a hash join over the whole table when the planner
            # believes it small, and LIMIT keeps the LATERAL subquery from being made one
            names = [f"k{n}" for n in range(len(keys))]
            items = func.unnest(*(values for _, values in keys)).table_valued(*names).render_derived(name=kind)
            row = select(*shown).where(*(column == items.c[name] for (column, _), name in zip(keys, names))) \
                .limit(1).lateral()
            return select(literal(kind), *row.c).select_from(items.join(row, true()))
        # "first IN (…) AND second IN (…)" walks the same index, where a row-value IN list scans
        # the table; the extra pairs it may return are not asked about
        return select(literal(kind), *shown).where(*(among(column, values) for column, values in keys))
    facts = union_all(  # (kind, key, value): everything the order locks and the month locks protect
        each("taken", [(p.provider_id, providers_), (p.order_id, orders)], (p.provider_id, p.order_id)),
        each("held", [(h.provider_id, providers_), (h.order_id, orders)], (h.provider_id, h.order_id)),
        each("seen", [(ib.sender, providers_), (ib.message_id, ids)], (ib.sender, ib.message_id)),
        each("customer", [(pid.passport_id, passports)], (pid.passport_id, pid.customer_id)),
        select(literal("shut"), billing_months.c.month, literal("")).where(billing_months.c.month >= bindparam("first")),
    )
    c = contents.c
    return {
        "providers": select(providers.c.provider_id, providers.c.signing_secrets)
        .where(providers.c.active, among(providers.c.provider_id, providers_)),
        "facts": facts,
        # the providers' contents of the ids named: a pair not asked about is not looked up
        "contents": select(contents).where(among(c.provider_id, providers_),
                                           among(c.content_id, listed("content_ids", c.content_id))),
        # FOR UPDATE, in a fixed order (SQLite renders no FOR UPDATE: its transactions are serial)
        "lines": select(lines).where(among(lines.c.customer_id, customers)).order_by(lines.c.customer_id)
        .with_for_update(),
        "holders": select(passport_ids).where(among(pid.passport_id, passports)),
        "accounts": select(lb.customer_id, lb.from_month, lb.billing_account)
        .where(among(lb.customer_id, customers)).order_by(lb.from_month),
        "usage": _usage(customers, arrays),
        "subscriptions": select(p.dedupe_key, p.start_month, p.last_month, p.cancelled_at)
        .where(among(p.dedupe_key, listed("keys", p.dedupe_key))),
        "charged": select(charges.c.dedupe_key, charges.c.service_month)
        .where(among(charges.c.dedupe_key, listed("keys", charges.c.dedupe_key)),
               among(charges.c.service_month, listed("months", charges.c.service_month))),
    }


def _usage(customers: BindParameter, arrays: bool) -> Select:
    """(line, Passport ID, amount) of the month for each line asked about (billing.month_lines).

    On PostgreSQL, line by line (``LATERAL``), so each line's charges are found through the
    (billing_month, customer_id) index whatever the statistics say. Asked for a list of lines at
    once, the planner — early in a month, or before autoanalyze, when it believes the month holds a
    few hundred charges — read the whole month through the index's first column and filtered it:
    47 ms a batch with 200,000 charges in the month against 14 ms line by line, and growing with
    everyone's purchases."""
    if not arrays:
        month = billing.month_lines(bindparam("month"), open_month=True, customer_id=customers).subquery()
        return select(month.c.customer_id, month.c.passport_id, func.sum(month.c.amount)).group_by(
            month.c.customer_id, month.c.passport_id)
    line = func.unnest(customers).table_valued("customer_id").render_derived(name="line")
    # month_lines' selects sit in subqueries inside the LATERAL one, where SQLAlchemy would give each
    # its own FROM line: they name the line's column in SQL instead
    month = billing.month_lines(bindparam("month"), open_month=True,
                                customer_id=literal_column("line.customer_id")).subquery()
    per_line = select(month.c.passport_id, func.sum(month.c.amount).label("amount")).group_by(
        month.c.passport_id).lateral("per_line")
    return select(line.c.customer_id, per_line.c.passport_id, per_line.c.amount).select_from(
        line.join(per_line, true()))


class _Decider:
    """One run, in one transaction: lock, read everything at once, decide in order, write at once."""

    def __init__(self, conn: Connection, items: list[_Item], now: datetime, box: SecretBox):
        self.conn, self.items, self.now, self.box = conn, items, now, box
        self.pg = conn.dialect.name == "postgresql"

    def run(self) -> None:
        content_of = self._authenticate()
        if not self.items:
            return
        for item in self.items:
            item.start = billing_month(item.msg.occurred_at)
        facts = self._lock_orders_and_read_facts()
        taken, held, customer_of = facts["taken"], facts["held"], dict(facts["customer"])
        redelivered = facts["seen"]
        self.items = [i for i in self.items if (i.msg.provider_id, i.msg.message_id) not in redelivered]
        if not self.items:
            return
        later = self._place_in_open_months({month for month, _ in facts["shut"]})
        for item in self.items:
            item.customer_id = customer_of.get(item.msg.passport_id)
        line_of, holder_row, account, usage, subs, charged = self._lock_lines_and_read(later, content_of)
        accepted: list[tuple[_Item, Content, str]] = []
        for item in self.items:
            msg = item.msg
            if (msg.provider_id, msg.order_id) in taken:
                item.decision = self._refuse(item, Reason.DUPLICATE_ORDER)
                continue
            content = content_of.get((msg.provider_id, msg.content_id))
            monthly = content is not None and content.price_type == MONTHLY_FLAT
            if monthly and item.start != item.month:
                item.deferred = True  # a late subscription bills closed months: the one-message path
                continue
            holder = self._holder(item, line_of, holder_row)
            key = billing.dedupe_key(msg.passport_id, msg.provider_id, msg.content_id)

            def billed(month: str, key: str = key) -> bool:  # as billing.month_is_billed_for
                return (key, month) in charged or any(
                    s <= month and (last is None or last >= month) for s, last, _ in subs.get(key, []))

            def facts(item: _Item = item, content: Content = content, holder: Holder = holder,  # type: ignore[assignment]
                      key: str = key, monthly: bool = monthly) -> Usage:
                if monthly:
                    subscribed = any(cancelled is None and (last is None or last >= item.month)
                                     for _, last, cancelled in subs.get(key, []))
                    added = 0 if billed(item.start) else content.unit_price
                else:
                    subscribed, added = False, content.unit_price * msg.quantity
                by_passport = usage.get((item.month, holder.customer_id), {})
                return Usage(already_subscribed=subscribed, passport_usage=by_passport.get(msg.passport_id, 0),
                             line_usage=sum(by_passport.values()), added=added)

            verdict = decide_purchase(provider_id=msg.provider_id, content_id=msg.content_id, quantity=msg.quantity,
                                      unit_price=msg.unit_price, content=content, holder=holder, usage=facts)
            if not verdict.accepted:
                item.decision = self._refuse(item, verdict.reason)
                continue
            assert content is not None and holder is not None and item.customer_id is not None
            item.plan = [m for m in [item.start] if not (monthly and billed(m))]
            if monthly:
                subs.setdefault(key, []).append((item.start, term_last_month(item.start, content.term_months), None))
            charged.update((key, m) for m in item.plan)
            by_passport = usage.setdefault((item.month, item.customer_id), {})
            by_passport[msg.passport_id] = by_passport.get(msg.passport_id, 0) + content.unit_price * msg.quantity * len(item.plan)
            accepted.append((item, content, account[(item.customer_id, item.month)]))
            item.decision = Decision(message_id=msg.message_id, status="accepted", billing_month=item.month)
        self._write(accepted)
        for item in self.items:
            if (item.msg.provider_id, item.msg.order_id) in held and item.decision is not None and not item.deferred:
                release_held_cancels(self.conn, item.msg.provider_id, item.msg.order_id, item.number, self.now)

    # ---- locks and reads --------------------------------------------------------------------

    def _authenticate(self) -> dict[tuple[str, str], Content]:
        """Keep the items of a known, active provider that signed them; the others are quarantined
        on the one-message path (deferred). Returns the contents the items name."""
        reads, providers_ = _reads(self.pg), list({i.msg.provider_id for i in self.items})
        *_, signers, offered = pipelined(
            self.conn, *([(_PLAN_FOR_THE_BATCH, {})] if self.pg else []),
            (reads["providers"], {"providers": providers_}),
            (reads["contents"], {"providers": providers_, "content_ids": list({i.msg.content_id for i in self.items})}))
        secrets = {pid: self.box.open(sealed) for pid, sealed in signers}
        for item in self.items:
            known = secrets.get(item.msg.provider_id)
            item.canonical = canonical_bytes(item.body)
            item.deferred = known is None or not signature_matches(item.body, known, canonical=item.canonical)
        self.items = [i for i in self.items if not i.deferred]
        return {(r.provider_id, r.content_id): Content(r.provider_id, r.content_id, r.name, r.price_type,
                                                       r.unit_price, r.term_months) for r in offered}

    def _lock_orders_and_read_facts(self) -> dict[str, set[tuple[str, str]]]:
        """Lock the orders and share the months, then read what those locks protect — one round trip."""
        locks = locking_keys(self.conn.dialect.name, orders=[(i.msg.provider_id, i.msg.order_id) for i in self.items],
                             shared_months={i.start for i in self.items})
        *_, rows = pipelined(self.conn, *locks, (_reads(self.pg)["facts"], {
            # one each per item, in step: the (provider, order) and (provider, message id) pairs
            "providers": [i.msg.provider_id for i in self.items],
            "orders": [i.msg.order_id for i in self.items],
            "ids": [i.msg.message_id for i in self.items],
            "passports": list({i.msg.passport_id for i in self.items}),
            "first": min(i.start for i in self.items)}))
        out: dict[str, set[tuple[str, str]]] = {"taken": set(), "held": set(), "seen": set(), "customer": set(),
                                                "shut": set()}
        for kind, key, value in rows:
            out[kind].add((key, value))
        return out

    def _place_in_open_months(self, shut: set[str]) -> set[str]:
        """Each item's billing month: its own, or the first open one after it (a late charge).
        Returns the later months, which the batch must share too."""
        later = set()
        for item in self.items:
            month = item.start
            while month in shut:
                month = add_months(month, 1)
            item.month = month
            if month != item.start:
                later.add(month)
        return later

    def _lock_lines_and_read(self, later: set[str], content_of: dict) -> tuple:
        """Share the later months, lock the batch's lines (in order), and read what the line locks
        protect — one round trip: each line and Passport ID, each line's billing accounts, its usage
        in each month the batch bills, and the monthly-flat subscriptions and charges."""
        items = [i for i in self.items if i.customer_id is not None]
        if not items:
            return {}, {}, {}, {}, {}, set()
        customers = sorted({i.customer_id for i in items})
        months = sorted({i.month for i in items})
        keys = list({billing.dedupe_key(i.msg.passport_id, i.msg.provider_id, i.msg.content_id) for i in items
                     if getattr(content_of.get((i.msg.provider_id, i.msg.content_id)), "price_type", None)
                     == MONTHLY_FLAT})
        reads = _reads(self.pg)
        locks = locking_keys(self.conn.dialect.name, orders=[], shared_months=later) if later else []
        monthly = [(reads["subscriptions"], {"keys": keys}),
                   (reads["charged"], {"keys": keys, "months": list({i.start for i in items})})] if keys else []
        done = pipelined(self.conn, *locks,
                         (reads["lines"], {"customers": customers}),
                         (reads["holders"], {"passports": list({i.msg.passport_id for i in items})}),
                         (reads["accounts"], {"customers": customers}),
                         *[(reads["usage"], {"month": month, "customers": sorted({
                             i.customer_id for i in items if i.month == month})}) for month in months],
                         *monthly)[len(locks):]
        line_rows, holder_rows, account_rows, usage_rows = done[0], done[1], done[2], done[3:3 + len(months)]
        line_of = {r.customer_id: r for r in line_rows}
        holder_row = {r.passport_id: r for r in holder_rows}
        changes: dict[str, list[tuple[str, str]]] = {}  # line → (from month, account), oldest first
        for customer_id, from_month, account_ in account_rows:
            changes.setdefault(customer_id, []).append((from_month, account_))
        # each line's account in each month it bills: the latest change effective by then
        account: dict[tuple[str | None, str], str] = {}
        for item in items:
            for from_month, account_ in changes.get(item.customer_id, []):
                if from_month <= item.month:
                    account[(item.customer_id, item.month)] = account_
        usage: dict[tuple[str, str], dict[str, int]] = {}  # (month, line) → usage per Passport ID of the line
        for month, rows in zip(months, usage_rows):
            for customer_id, passport_id, amount in rows:
                usage.setdefault((month, customer_id), {})[passport_id] = int(amount)
        subs: dict[str, list] = {}  # monthly-flat key → its subscriptions as (start, last, cancelled_at)
        charged: set[tuple[str, str]] = set()  # (key, service month) already charged
        if keys:
            for key, start, last, cancelled in done[-2]:
                subs.setdefault(key, []).append((start, last, cancelled))
            charged = {(key, month) for key, month in done[-1]}
        return line_of, holder_row, account, usage, subs, charged

    def _holder(self, item: _Item, line_of: dict, holder_row: dict) -> Holder | None:
        if item.customer_id is None:
            return None
        line, pid = line_of[item.customer_id], holder_row[item.msg.passport_id]
        return Holder(passport_id=item.msg.passport_id, customer_id=item.customer_id, status=pid.status,
                      deleted=pid.deleted_at is not None, restricted=pid.restricted, limit=pid.limit,
                      access_service=line.access_service, line_terminated=line.terminated_at is not None,
                      line_restricted=line.restricted, line_limit=line.line_limit)

    @staticmethod
    def _refuse(item: _Item, reason: Reason | None) -> Decision:
        return Decision(message_id=item.msg.message_id, status="rejected", reason=reason.value if reason else None)

    # ---- writes -------------------------------------------------------------------------------

    def _write(self, accepted: list[tuple[_Item, Content, str]]) -> None:
        now, conn = self.now, self.conn
        bought = [(item, account, purchase_row(item.msg, content, item.customer_id, item.start))
                  for item, content, account in accepted]
        numbers = {(provider, order): number for provider, order, number in insert_rows(
            conn, purchases, [purchase for _, _, purchase in bought],
            returning=("provider_id", "order_id", "application_number"))}
        events: list[tuple[str, BaseModel]] = []
        rows = []
        for item, account, purchase in bought:
            item.number = number = numbers[(item.msg.provider_id, item.msg.order_id)]
            item.decision = item.decision.model_copy(update={"application_number": str(number)})
            for service_month in item.plan:
                row, record = charge(purchase, number, account, service_month, item.month)
                rows.append(row)
                events.append((outbox.BILLING_RECORDS, record))
        decided = [i for i in self.items if i.decision is not None and not i.deferred]
        events += [(outbox.provider_results(i.msg.provider_id),
                    DecisionEvent(event_id=outbox.new_event_id(), **i.decision.model_dump())) for i in decided]
        name = conn.dialect.name
        pipelined(conn, *inserting(name, charges, rows), *inserting(name, inbox, [
            {"sender": i.msg.provider_id, "message_id": i.msg.message_id, "task": i.msg.task,
             "content_hash": content_hash(i.body, canonical=i.canonical), "order_id": i.msg.order_id,
             "received_at": now, "decision": i.decision.model_dump(mode="json")} for i in decided]),
            *outbox.emitting(name, events, now=now))

