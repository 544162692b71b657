"""SPEC.md "Month close": bills every subscription billable in M, one invoice per billing account,
idempotent and resumable."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, update

from matomete_core.adapters.relay import relay
from matomete_core.adapters.tables import charges, invoices, line_billing
from matomete_core.errors import MonthNotEnded
from matomete_core.service.close import STEPS, close_month
from matomete_core.service.invoices import stored_invoices
from tests.unit.conftest import jst

CLOSE_AT = {"2026-07": jst("2026-08-01 03:00"), "2026-08": jst("2026-09-01 03:00"),
            "2026-09": jst("2026-10-01 03:00"), "2026-10": jst("2026-11-01 03:00")}


@pytest.fixture
def close(deps, tmp_path):
    def run(month: str, **kw):
        return close_month(deps.engine, month, now=CLOSE_AT[month], export_dir=tmp_path / "exports", **kw)
    run.exports = tmp_path / "exports"
    return run


def invoice(deps, month: str, account: str = "06-1234-5678") -> dict:
    (doc,) = [i for i in stored_invoices(deps.engine, month) if i["billing_account"] == account]
    return doc


def test_the_guides_invoice_example_is_one_item_of_1125_yen(deps, provider, close):
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))
    provider.buy("user01", "anime1", jst("2026-08-03 10:05"))
    provider.buy("user01", "anime2", jst("2026-08-03 10:06"))
    result = close("2026-08")
    assert result == {"month": "2026-08", "status": "closed", "charges": 3, "invoices": 1, "total": 1125}
    doc = invoice(deps, "2026-08")
    assert (doc["title"], doc["total"]) == ("フレッツ・まとめて支払い料金", 1125)
    assert [(i["provider_name"], i["content_name"], i["amount"]) for i in doc["items"]] == [
        ("A社", "パックサービス", 525), ("B社", "名作アニメ1", 300), ("B社", "名作アニメ2", 300)]


def test_a_month_that_has_not_ended_cannot_be_closed(deps):
    with pytest.raises(MonthNotEnded):
        close_month(deps.engine, "2026-08", now=jst("2026-08-31 23:59"), export_dir="unused")


def test_renewals_are_billed_by_each_close_and_published_as_charges(deps, provider, close):
    provider.buy("user01", "anime1", jst("2026-07-10 10:00"), order_id="r1")
    provider.cancel("r1", jst("2026-09-01 00:00"))  # pattern 6 from July's view: July and August
    for month in ("2026-07", "2026-08", "2026-09"):
        close(month)
    with deps.engine.connect() as conn:
        months = conn.execute(select(charges.c.service_month).order_by(charges.c.service_month)).scalars().all()
    assert months == ["2026-07", "2026-08"]
    relay(deps.engine, deps.publisher, now=CLOSE_AT["2026-09"])
    records = deps.publisher.bodies("billing-records")
    assert [(r["type"], r["month"]) for r in records if r["type"] == "charge"] == [("charge", "2026-07"), ("charge", "2026-08")]
    renewal = [r for r in records if r["type"] == "charge"][1]
    assert renewal["late"] is False and renewal["billing_account"] == "06-1234-5678" and renewal["amount"] == 300
    assert [r["total"] for r in records if r["type"] == "invoice"] == [300, 300]


def test_pattern_5_across_closes_bills_three_charges(deps, provider, close):
    provider.buy("user01", "anime1", jst("2026-07-10 12:00"), order_id="a")
    close("2026-07")
    provider.cancel("a", jst("2026-08-05 12:00"))
    provider.buy("user01", "anime1", jst("2026-08-20 12:00"), order_id="b")
    close("2026-08")
    provider.cancel("b", jst("2026-09-15 12:00"))
    close("2026-09")
    close("2026-10")
    assert [invoice(deps, m)["total"] for m in ("2026-07", "2026-08", "2026-09")] == [300, 300, 300]
    assert [i["billing_account"] for i in stored_invoices(deps.engine, "2026-10")] == []


def test_a_term_ends_at_close_and_its_provider_is_told(deps, provider, close):
    number = provider.buy("user01", "trial", jst("2026-07-15 12:00"))["application_number"]
    for month in ("2026-07", "2026-08", "2026-09", "2026-10"):
        close(month)
    assert [invoice(deps, m)["total"] for m in ("2026-07", "2026-08", "2026-09")] == [1000, 1000, 1000]
    relay(deps.engine, deps.publisher, now=CLOSE_AT["2026-10"])
    ended = [b for b in deps.publisher.bodies("provider-results.PA") if b["type"] == "subscription_ended"]
    assert [(e["application_number"], e["cause"], e["ended_at"]) for e in ended] == [
        (number, "term_end", "2026-10-01T00:00:00+09:00")]


def test_a_late_purchase_goes_on_the_next_invoice_marked_late(deps, provider, close):
    close("2026-08")
    decision = provider.buy("user01", "coin", jst("2026-08-31 23:58"), now=jst("2026-09-01 03:05"), quantity=2)
    assert decision["billing_month"] == "2026-09"
    close("2026-09")
    assert invoice(deps, "2026-09")["total"] == 200
    relay(deps.engine, deps.publisher, now=CLOSE_AT["2026-09"])
    (charge,) = [b for b in deps.publisher.bodies("billing-records") if b["type"] == "charge"]
    assert (charge["late"], charge["month"]) == (True, "2026-09")


def test_omatome_members_are_billed_on_their_representatives_invoice(deps, provider, close):
    with deps.engine.begin() as conn:
        conn.execute(update(line_billing).where(line_billing.c.customer_id == "CAF0000000002")
                     .values(omatome_representative="06-1234-5678"))
        conn.execute(update(__import__("matomete_core.adapters.tables", fromlist=["lines"]).lines)
                     .values(restricted=False))
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))
    provider.buy("lineblk1", "anime1", jst("2026-08-03 10:00"))
    close("2026-08")
    assert [(i["billing_account"], i["total"]) for i in stored_invoices(deps.engine, "2026-08")] == [
        ("06-1234-5678", 825)]


def test_a_billing_number_change_moves_charges_from_its_effective_month(deps, provider, close):
    provider.buy("user01", "anime1", jst("2026-08-03 10:00"))
    with deps.engine.begin() as conn:
        conn.execute(line_billing.insert().values(customer_id="CAF0000012573", from_month="2026-09",
                                                  billing_account="06-9999-0000"))
    close("2026-08")
    close("2026-09")
    assert [i["billing_account"] for i in stored_invoices(deps.engine, "2026-08")] == ["06-1234-5678"]
    assert [i["billing_account"] for i in stored_invoices(deps.engine, "2026-09")] == ["06-9999-0000"]


def test_closing_twice_gives_the_same_invoices_and_no_duplicate_charge(deps, provider, close):
    provider.buy("user01", "anime1", jst("2026-07-10 10:00"))
    close("2026-07")
    first = close("2026-08")
    again = close("2026-08")
    assert first == again
    with deps.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(charges)).scalar_one() == 2


@pytest.mark.parametrize("killed_after", STEPS[:-1])
def test_a_close_killed_after_any_step_resumes_to_the_same_invoices(deps, provider, close, killed_after):
    provider.buy("user01", "anime1", jst("2026-07-10 10:00"))
    provider.buy("user03", "coin", jst("2026-08-10 10:00"), quantity=3)
    close("2026-07")

    def crash(step: str) -> None:
        if step == killed_after:
            raise KeyboardInterrupt(f"killed after {step}")

    with pytest.raises(KeyboardInterrupt):
        close("2026-08", after_step=crash)
    result = close("2026-08")
    assert result["total"] == 600 and result["charges"] == 2
    relay(deps.engine, deps.publisher, now=CLOSE_AT["2026-08"])
    invoices_published = [b for b in deps.publisher.bodies("billing-records") if b["type"] == "invoice"]
    assert [(b["month"], b["total"]) for b in invoices_published] == [("2026-07", 300), ("2026-08", 600)]
    lines = (close.exports / "invoices-2026-08.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["total"] for x in lines] == [600]


def test_the_export_files_are_written_whole(deps, provider, close):
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))
    provider.buy("user01", "anime1", jst("2026-08-03 10:00"))
    close("2026-08")
    csv_rows = (close.exports / "invoices-2026-08.csv").read_text(encoding="utf-8").splitlines()
    assert csv_rows[0].startswith("billing_account,month,title,total") and len(csv_rows) == 3
    assert csv_rows[1] == "06-1234-5678,2026-08,フレッツ・まとめて支払い料金,825,PA,A社,pack,パックサービス,1,525"
    (line,) = (close.exports / "invoices-2026-08.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == invoice(deps, "2026-08")
    assert not list(close.exports.glob("*.part"))


def test_a_voided_purchase_is_not_invoiced(deps, provider, close):
    provider.buy("user01", "coin", jst("2026-08-03 10:00"), order_id="v")
    provider.cancel("v", jst("2026-08-03 11:00"))
    provider.buy("user01", "anime1", jst("2026-08-03 10:00"))
    close("2026-08")
    with deps.engine.connect() as conn:
        assert conn.execute(select(invoices.c.total)).scalars().all() == [300]


def test_verify_month_finds_nothing_wrong_in_an_honest_close(deps, provider, close):
    from matomete_core.service.verify import verify_month
    provider.buy("user01", "anime1", jst("2026-07-10 10:00"))
    provider.buy("user01", "coin", jst("2026-08-10 10:00"), quantity=2)
    close("2026-07")
    close("2026-08")
    assert verify_month(deps.engine, "2026-08") == {"month": "2026-08", "ok": True, "differences": []}


def test_verify_month_catches_a_tampered_charge(deps, provider, close):
    from matomete_core.service.verify import verify_month
    provider.buy("user01", "anime1", jst("2026-08-10 10:00"))
    close("2026-08")
    with deps.engine.begin() as conn:
        conn.execute(update(charges).values(amount=999))
    report = verify_month(deps.engine, "2026-08")
    assert not report["ok"]
    assert {d["kind"] for d in report["differences"]} == {"charge_amount", "invoice_item_missing_or_wrong",
                                                           "invoice_item_unexpected"}


def test_verify_month_catches_a_tampered_invoice_total(deps, provider, close):
    from matomete_core.service.verify import verify_month
    provider.buy("user01", "anime1", jst("2026-08-10 10:00"))
    close("2026-08")
    with deps.engine.begin() as conn:
        conn.execute(update(invoices).values(total=1))
    assert [d["kind"] for d in verify_month(deps.engine, "2026-08")["differences"]] == ["invoice_total"]


def test_settlement_tells_each_provider_what_it_is_owed_by_content(deps, provider, close):
    from matomete_core.service.invoices import settlement
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))
    provider.buy("user01", "anime1", jst("2026-08-03 10:00"))
    provider.buy("user03", "anime1", jst("2026-08-03 10:00"))
    close("2026-08")
    doc = settlement(deps.engine, "2026-08")
    assert doc["total"] == 1125 and doc["final"] is True
    assert [(p["provider_id"], p["total"]) for p in doc["providers"]] == [("PA", 525), ("PB", 600)]
    assert doc["providers"][1]["contents"] == [
        {"content_id": "anime1", "name": "名作アニメ1", "charges": 2, "quantity": 2, "amount": 600}]


def test_invoice_preview_shows_what_the_open_month_would_bill_now(deps, provider):
    from matomete_core.service.invoices import preview
    provider.buy("user01", "pack", jst("2026-07-03 10:00"))  # renews in August
    provider.buy("user01", "coin", jst("2026-08-03 10:00"), quantity=3)
    doc = preview(deps.engine, "CAF0000012573", now=jst("2026-08-05 10:00"))
    assert (doc["month"], doc["billing_account"], doc["total"]) == ("2026-08", "06-1234-5678", 825)
    assert [i["content_id"] for i in doc["items"]] == ["pack", "coin"]


def test_beat_closes_each_ended_month_once_even_after_missed_ticks(deps, provider, tmp_path):
    from matomete_core.service.close import close_due_months, months_due
    provider.buy("user01", "anime1", jst("2026-07-10 10:00"))
    assert months_due(deps.engine, now=jst("2026-08-01 02:59"), close_hour=3) == []
    # beat was down all of August: its first tick in September closes July and August, in order
    closed = close_due_months(deps.engine, now=jst("2026-09-01 03:10"), close_hour=3, export_dir=tmp_path)
    assert [c["month"] for c in closed] == ["2026-07", "2026-08"]
    assert close_due_months(deps.engine, now=jst("2026-09-01 03:20"), close_hour=3, export_dir=tmp_path) == []


def test_each_billing_account_gets_its_own_invoice_with_only_its_items(deps, provider, close):
    with deps.engine.begin() as conn:
        conn.execute(update(__import__("matomete_core.adapters.tables", fromlist=["lines"]).lines)
                     .values(restricted=False))
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))
    provider.buy("lineblk1", "anime1", jst("2026-08-03 10:00"))
    provider.buy("lineblk1", "anime2", jst("2026-08-03 10:00"))
    close("2026-08")
    docs = {i["billing_account"]: [x["content_id"] for x in i["items"]] for i in stored_invoices(deps.engine, "2026-08")}
    assert docs == {"03-0000-0002": ["anime1", "anime2"], "06-1234-5678": ["pack"]}
    relay(deps.engine, deps.publisher, now=CLOSE_AT["2026-08"])
    published = {b["billing_account"]: b["total"] for b in deps.publisher.bodies("billing-records") if b["type"] == "invoice"}
    assert published == {"03-0000-0002": 600, "06-1234-5678": 525}


def test_a_relay_killed_while_expanding_a_close_republishes_the_chunk_never_a_gap(deps, provider, close):
    from matomete_core.testing import FakePublisher
    for pid in ("user01", "user03"):
        for content in ("anime1", "anime2", "pack"):
            provider.buy(pid, content, jst("2026-07-10 10:00"))
    close("2026-07")
    relay(deps.engine, deps.publisher, now=CLOSE_AT["2026-07"])
    close("2026-08")  # six renewals

    class Dies(FakePublisher):
        def publish(self, queue, body, event_id):  # noqa: ANN001, ANN201
            if len(self.published) == 4:
                raise ConnectionError("relay killed")
            super().publish(queue, body, event_id)

    dying, survivor = Dies(), FakePublisher()
    with pytest.raises(ConnectionError):
        relay(deps.engine, dying, now=CLOSE_AT["2026-08"], batch=3)
    relay(deps.engine, survivor, now=CLOSE_AT["2026-08"], batch=3)
    seen = [b["event_id"] for b in dying.bodies("billing-records") + survivor.bodies("billing-records")
            if b["type"] == "charge"]
    assert len(set(seen)) == 6 and len(seen) > 6  # duplicates, same ids, no gap
