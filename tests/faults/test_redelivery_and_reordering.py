"""Every message delivered twice (or three times), in any order: a cancel before its purchase, two
cancels of one order, another provider's cancel, one line's purchases interleaved — and the months
close into the same invoices as one ordered delivery of each message.

In-process, on the embedded SQLite (a fresh copy of a loaded template database per example), through
the bus as a worker calls it. Hypothesis draws the deliveries; the ordered run is the oracle.

The scenario keeps to what the rules make order-independent: no limit is approached (which purchase
a limit refuses depends on arrival order by design) and the two cancels of one order fall on the
same day (the first cancel decided sets the end date).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from matomete_core.adapters.migrate import upgrade
from matomete_core.adapters.relay import relay
from matomete_core.adapters.tables import inbox
from matomete_core.config import Settings
from matomete_core.service import bus
from matomete_core.service.close import close_month
from matomete_core.service.deps import Deps, bootstrap
from matomete_core.service.invoices import stored_invoices
from matomete_core.service.loading import load_catalog, load_lines
from matomete_core.testing import FakePublisher, jst, over_the_wire, signed
from tests.faults.harness import Tally, report
from tests.unit.conftest import CATALOG, LINES, SECRETS

MONTHS = ("2026-08", "2026-09")
DELIVERED_AT = jst("2026-09-20 12:00")  # after every occurred_at, before either month closes
CLOSE_AT = {"2026-08": jst("2026-09-30 12:00"), "2026-09": jst("2026-10-01 03:00")}


def _msg(mid: str, provider_id: str, at: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    task = "matomete.purchase" if "content_id" in fields else "matomete.cancel"
    body = {"message_id": mid, "occurred_at": jst(at).isoformat(), "provider_id": provider_id, **fields}
    return task, signed(body, SECRETS[provider_id])


# (task, body), in the order the providers sent them; user01, user03 and blocked1 share one line
SCENARIO = [
    _msg("p1", "PB", "2026-08-03 10:00", order_id="b-1", passport_id="user01", content_id="anime1"),
    _msg("p2", "PB", "2026-08-05 10:00", order_id="b-2", passport_id="user01", content_id="coin", quantity=2),
    _msg("v2", "PB", "2026-08-06 10:00", order_id="b-2"),                      # void of a per-use purchase
    _msg("p3", "PB", "2026-08-07 10:00", order_id="b-3", passport_id="user03", content_id="coin", quantity=3),
    _msg("p4", "PA", "2026-08-08 10:00", order_id="a-1", passport_id="user03", content_id="pack"),
    _msg("p5", "PB", "2026-08-09 10:00", order_id="b-5", passport_id="user01", content_id="anime2"),
    _msg("p7", "PB", "2026-08-10 10:00", order_id="b-7", passport_id="blocked1", content_id="anime1"),  # refused
    _msg("c7", "PB", "2026-08-11 10:00", order_id="b-7"),                      # cancel of a refused purchase
    _msg("x1", "PA", "2026-08-12 10:00", order_id="b-1"),                      # PA cannot cancel PB's order
    _msg("c1", "PB", "2026-09-01 00:30", order_id="b-1"),                      # the 1st: August is the last month
    _msg("c1b", "PB", "2026-09-01 09:00", order_id="b-1"),                     # a second cancel, same day
    _msg("p6", "PA", "2026-09-02 10:00", order_id="a-2", passport_id="user03", content_id="trial"),
    _msg("c5", "PB", "2026-09-15 10:00", order_id="b-5"),
    _msg("h9", "PB", "2026-09-16 10:00", order_id="b-99"),                     # its purchase never comes
]


@dataclass
class Outcome:
    invoices: dict[str, list[dict[str, Any]]]
    decisions: Counter          # (task, status, reason) of the final decisions
    billing_records: Counter    # charges and voids as consumers see them, application number aside


@pytest.fixture(scope="session")
def loaded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the unit tier's catalog and lines, and the key that seals its secrets."""
    root = tmp_path_factory.mktemp("reorder-template")
    upgrade(f"sqlite:///{root / 'template.db'}")
    settings = Settings(database_url=f"sqlite:///{root / 'template.db'}", key_file=str(root / "template.key"))
    d = bootstrap(settings, publisher=FakePublisher())
    (root / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (root / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(d.engine, d.secrets, root / "catalog.json")
    load_lines(d.engine, settings, root / "lines.json")
    d.engine.dispose()
    return root


def fresh_deps(template: Path, workdir: Path) -> Deps:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(template / "template.db", workdir / "run.db")
    shutil.copy(template / "template.key", workdir / "run.key")
    return bootstrap(Settings(database_url=f"sqlite:///{workdir / 'run.db'}", key_file=str(workdir / "run.key")),
                     publisher=FakePublisher())


def deliver(template: Path, workdir: Path, deliveries: list[int]) -> Outcome:
    d = fresh_deps(template, workdir)
    try:
        for n, index in enumerate(deliveries):
            task, body = SCENARIO[index]
            decision = bus.handle(d, task, [over_the_wire(body)], {}, now=DELIVERED_AT + timedelta(seconds=n))
            assert decision["status"] != "quarantined", (task, body["message_id"], decision)
        for month in MONTHS:
            close_month(d.engine, month, now=CLOSE_AT[month], export_dir=workdir / "exports")
        relay(d.engine, d.publisher, now=CLOSE_AT["2026-09"])
        with d.engine.connect() as conn:
            final = conn.execute(select(inbox.c.task, inbox.c.decision)).all()
        records = Counter(
            json.dumps({k: v for k, v in body.items() if k not in ("event_id", "application_number")}, sort_keys=True)
            for body in d.publisher.bodies("billing-records") if body["type"] in ("charge", "charge_voided"))
        return Outcome(invoices={m: list(stored_invoices(d.engine, m)) for m in MONTHS},
                       decisions=Counter((t, dec["status"], dec["reason"]) for t, dec in final),
                       billing_records=records)
    finally:
        d.engine.dispose()


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def _report_the_properties():  # noqa: ANN202
    yield
    TALLY.report_all()


@pytest.fixture(scope="session")
def in_order(loaded_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    return deliver(loaded_template, tmp_path_factory.mktemp("in-order"), list(range(len(SCENARIO))))


def test_the_ordered_delivery_bills_what_the_rules_say(in_order):
    """The oracle itself, checked against SPEC.md by hand."""
    totals = {m: [(i["billing_account"], i["total"]) for i in docs] for m, docs in in_order.invoices.items()}
    # August: anime1 300 + coin 3×100 + pack 525 + anime2 300 (the voided coins are not billed)
    # September: pack 525 + anime2 300 + trial 1000 (anime1 was cancelled on the 1st: not billed)
    assert totals == {"2026-08": [("06-1234-5678", 1425)], "2026-09": [("06-1234-5678", 1825)]}
    assert in_order.decisions == Counter({
        ("matomete.purchase", "accepted", None): 6, ("matomete.purchase", "rejected", "RESTRICTED"): 1,
        ("matomete.cancel", "accepted", None): 3, ("matomete.cancel", "rejected", "ALREADY_CANCELLED"): 1,
        ("matomete.cancel", "rejected", "UNKNOWN_ORDER"): 1, ("matomete.cancel", "held", None): 2})


deliveries = st.lists(st.integers(min_value=1, max_value=2), min_size=len(SCENARIO), max_size=len(SCENARIO)).flatmap(
    lambda extra: st.permutations([i for i, n in enumerate(extra) for _ in range(1 + n)]))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(order=deliveries)
def test_every_message_delivered_twice_in_any_order_bills_the_same_invoices(loaded_template, in_order, tmp_path, order):
    # given each message delivered two or three times, in the drawn order
    workdir = tmp_path / f"run-{abs(hash(tuple(order)))}"
    # when the months close
    outcome = deliver(loaded_template, workdir, order)
    shutil.rmtree(workdir, ignore_errors=True)
    charges = sum(outcome.billing_records.values()) - sum(in_order.billing_records.values())
    TALLY.add("redelivered and reordered (hypothesis)", examples=1, sent=len(SCENARIO), delivered=len(order),
              decided=sum(outcome.decisions.values()), lost=max(0, -charges), doubled=max(0, charges),
              invoices_differ=outcome.invoices != in_order.invoices)
    # then the invoices, the final decisions and the billing records are those of the ordered run
    assert outcome.invoices == in_order.invoices
    assert outcome.decisions == in_order.decisions
    assert outcome.billing_records == in_order.billing_records


def test_the_reordering_figures_are_reported(loaded_template, in_order, tmp_path):
    """One fixed worst case for the report: everything twice, in reverse."""
    order = [i for i in reversed(range(len(SCENARIO))) for _ in range(2)]
    started = datetime.now()
    outcome = deliver(loaded_template, tmp_path / "reverse", order)
    same = outcome.invoices == in_order.invoices and outcome.billing_records == in_order.billing_records
    report("redelivered and reordered", sent=len(SCENARIO), delivered=len(order),
           decided=sum(outcome.decisions.values()), lost=0 if same else None, doubled=0 if same else None,
           invoices_equal_ordered_run=same, hypothesis_examples=40,
           seconds=round((datetime.now() - started).total_seconds(), 2))
    assert same
