"""SPEC.md "Deciding a purchase": the checks in their order, the first that fails is the reason."""

from __future__ import annotations

from sqlalchemy import select, update

from matomete_core.adapters.tables import charges, lines, outbox, passport_ids
from matomete_core.service.months import mark_closing
from tests.unit.conftest import jst

AT = jst("2026-08-10 12:00")


def test_an_accepted_purchase_gets_an_application_number_and_its_billing_month(provider):
    decision = provider.buy("user01", "pack", AT, unit_price=525)
    assert decision == {"message_id": decision["message_id"], "status": "accepted", "reason": None,
                        "application_number": "10001", "billing_month": "2026-08", "replayed": False}


def test_application_numbers_are_new_for_each_accepted_purchase(provider):
    first = provider.buy("user01", "pack", AT)["application_number"]
    second = provider.buy("user01", "anime1", AT)["application_number"]
    assert int(second) == int(first) + 1


def test_unknown_content_is_refused_unknown_content(provider):
    assert provider.buy("user01", "nothing", AT)["reason"] == "UNKNOWN_CONTENT"


def test_a_provider_cannot_sell_another_providers_content(provider):
    assert provider.buy("user01", "anime1", AT, provider_id="PA")["reason"] == "UNKNOWN_CONTENT"


def test_a_stated_price_other_than_the_catalogs_is_refused_price_mismatch(provider):
    assert provider.buy("user01", "pack", AT, unit_price=500)["reason"] == "PRICE_MISMATCH"


def test_quantity_must_be_1_for_monthly_flat(provider):
    assert provider.buy("user01", "pack", AT, quantity=2)["reason"] == "INVALID_QUANTITY"


def test_quantity_may_be_1_to_99_for_per_use(provider):
    assert provider.buy("user01", "coin", AT, quantity=99)["status"] == "accepted"
    assert provider.buy("user01", "coin", AT, quantity=100)["reason"] == "INVALID_QUANTITY"


def test_an_unknown_passport_id_is_refused(provider):
    assert provider.buy("nobody99", "pack", AT)["reason"] == "UNKNOWN_PASSPORT_ID"


def test_a_terminated_line_refuses_line_terminated(deps, provider):
    with deps.engine.begin() as conn:
        conn.execute(update(lines).where(lines.c.customer_id == "CAF0000012573").values(terminated_at=AT))
    assert provider.buy("user01", "pack", AT)["reason"] == "LINE_TERMINATED"


def test_an_id_deleted_by_its_lines_termination_refuses_line_terminated(deps, provider):
    with deps.engine.begin() as conn:
        conn.execute(update(passport_ids).where(passport_ids.c.passport_id == "user03").values(deleted_at=AT))
    assert provider.buy("user03", "pack", AT)["reason"] == "LINE_TERMINATED"


def test_a_line_whose_access_service_is_not_eligible_is_refused(provider):
    assert provider.buy("prem01", "pack", AT)["reason"] == "LINE_NOT_ELIGIBLE"


def test_an_id_still_registering_is_refused_passport_id_not_ready(provider):
    assert provider.buy("newbie01", "pack", AT)["reason"] == "PASSPORT_ID_NOT_READY"


def test_a_restricted_id_cannot_buy(provider):
    assert provider.buy("blocked1", "pack", AT)["reason"] == "RESTRICTED"


def test_an_id_on_a_restricted_line_cannot_buy(provider):
    assert provider.buy("lineblk1", "pack", AT)["reason"] == "RESTRICTED"


def test_a_second_purchase_of_an_active_monthly_content_is_refused_already_subscribed(provider):
    provider.buy("user01", "anime1", AT)
    assert provider.buy("user01", "anime1", AT)["reason"] == "ALREADY_SUBSCRIBED"


def test_another_passport_id_may_subscribe_to_the_same_content(provider):
    provider.buy("user01", "anime1", AT)
    assert provider.buy("user03", "anime1", AT)["status"] == "accepted"


def test_the_checks_run_in_order_the_first_failure_is_the_reason(provider):
    # a restricted ID buying with a wrong price: the price check comes first
    assert provider.buy("blocked1", "pack", AT, unit_price=1)["reason"] == "PRICE_MISMATCH"
    # an unknown ID with a bad quantity: the quantity check comes first
    assert provider.buy("nobody99", "pack", AT, quantity=3)["reason"] == "INVALID_QUANTITY"
    # a registering ID on an ineligible line would be LINE_NOT_ELIGIBLE first; a restricted line
    # whose ID is already subscribed is RESTRICTED before ALREADY_SUBSCRIBED
    assert provider.buy("lineblk1", "anime1", AT)["reason"] == "RESTRICTED"


def test_a_purchase_dated_in_a_closed_month_is_billed_late_in_the_first_open_month(deps, provider):
    with deps.engine.begin() as conn:
        mark_closing(conn, "2026-08", now=jst("2026-09-01 03:00"))
    decision = provider.buy("user01", "coin", jst("2026-08-31 23:59"), now=jst("2026-09-01 04:00"))
    assert decision["billing_month"] == "2026-09"
    with deps.engine.connect() as conn:
        charge = conn.execute(select(charges)).mappings().one()
    assert (charge["service_month"], charge["billing_month"], charge["late"]) == ("2026-08", "2026-09", True)


def test_a_late_monthly_purchase_bills_its_closed_month_late_and_its_open_month_as_renewal(deps, provider):
    with deps.engine.begin() as conn:
        mark_closing(conn, "2026-08", now=jst("2026-09-01 03:00"))
    decision = provider.buy("user01", "anime1", jst("2026-08-31 23:00"), now=jst("2026-09-01 04:00"))
    assert decision["billing_month"] == "2026-09"
    from matomete_core.service.views import statement
    assert statement(deps.engine, "CAF0000012573", "2026-09")["total_amount"] == 600


def test_an_accepted_purchase_writes_its_decision_and_charge_to_the_outbox_in_one_transaction(deps, provider):
    number = provider.buy("user01", "pack", AT)["application_number"]
    with deps.engine.connect() as conn:
        queues = sorted(r.queue for r in conn.execute(select(outbox.c.queue)))
    assert queues == ["billing-records", "provider-results.PA"]
    from matomete_core.adapters.relay import relay
    relay(deps.engine, deps.publisher, now=AT)
    (charge,) = deps.publisher.bodies("billing-records")
    assert charge["type"] == "charge" and charge["application_number"] == number
    assert (charge["amount"], charge["billing_account"], charge["month"], charge["late"]) == (525, "06-1234-5678", "2026-08", False)
    (event,) = deps.publisher.bodies("provider-results.PA")
    assert event["type"] == "decision" and event["status"] == "accepted" and event["event_id"]


def test_a_rejection_is_told_to_the_provider_but_charges_nothing(deps, provider):
    provider.buy("user01", "pack", AT, unit_price=1)
    from matomete_core.adapters.relay import relay
    relay(deps.engine, deps.publisher, now=AT)
    assert deps.publisher.bodies("billing-records") == []
    assert deps.publisher.bodies("provider-results.PA")[0]["reason"] == "PRICE_MISMATCH"


def test_a_second_order_with_the_same_order_id_is_refused_duplicate_order(provider):
    provider.buy("user01", "pack", AT, order_id="same")
    assert provider.buy("user03", "anime1", AT, order_id="same", provider_id="PB")["status"] == "accepted"
    assert provider.buy("user03", "pack", AT, order_id="same")["reason"] == "DUPLICATE_ORDER"
