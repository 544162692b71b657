"""The strictness rules of every inbound message (CONTRACT.md, "Every inbound message")."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from matomete_core import messages
from matomete_core.messages import LineChange, Purchase, SetLimits, SetRestriction

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)  # the worker's clock: 2026-12-01T09:00:00+09:00
JST = timezone(timedelta(hours=9))
ACCESS_KEY = "ABCD1234"


def wire(body: dict[str, Any]) -> Any:
    """The body as a worker receives it: through JSON, as the broker carries it."""
    return json.loads(json.dumps(body, ensure_ascii=False))


def parse(model: type, body: dict[str, Any], now: datetime = NOW) -> Any:
    return messages.parse(model, wire(body), now=now)


def purchase(**fields: Any) -> dict[str, Any]:
    return {"message_id": "pa-0001", "occurred_at": "2026-11-03T10:15:00+09:00", "provider_id": "PA",
            "order_id": "A-778899", "passport_id": "user01", "content_id": "pack", "quantity": 1,
            "unit_price": 525, "signature": "0" * 64, **fields}


def line_change(**fields: Any) -> dict[str, Any]:
    return {"message_id": "ord-1", "occurred_at": "2026-12-01T00:00:00+09:00", "customer_id": "CAF0000012573",
            "change": "relocation", "customer_id_changed": False, **fields}


def set_limits(**fields: Any) -> dict[str, Any]:
    return {"message_id": "ss-1", "occurred_at": "2026-11-11T12:00:00+09:00", "customer_id": "CAF0000012573",
            "line_limit": 10000, **fields, "access_key": ACCESS_KEY}  # the key last: where a repr shows it


def set_restriction(**fields: Any) -> dict[str, Any]:
    return {"message_id": "ss-2", "occurred_at": "2026-11-10T08:30:00+09:00", "customer_id": "CAF0000012573",
            "passport_id": "user01", "restricted": True, **fields, "access_key": ACCESS_KEY}


def errors_of(model: type, body: dict[str, Any], now: datetime = NOW) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        parse(model, body, now)
    return [e["loc"] for e in caught.value.errors()]


def at(delta: timedelta) -> str:
    return (NOW + delta).astimezone(JST).isoformat()


# ---- timestamps ---------------------------------------------------------------------------------

def test_an_explicit_offset_occurred_at_is_valid():
    assert parse(Purchase, purchase()).occurred_at == datetime(2026, 11, 3, 10, 15, tzinfo=JST)


@pytest.mark.parametrize("naive", ["2026-11-03T10:15:00", "2026-11-03T10:15:00.250"])
def test_a_naive_occurred_at_is_invalid(naive: str):
    assert errors_of(Purchase, purchase(occurred_at=naive)) == [("occurred_at",)]


@pytest.mark.parametrize("not_rfc3339", ["2026-11-03", "2026-11-03 10:15:00+09:00", "2026-11-03T10:15+09:00",
                                         "1793668500", "2026-11-03T10:15:00+0900", ""])
def test_an_occurred_at_not_in_rfc_3339_form_is_invalid(not_rfc3339: str):
    assert errors_of(Purchase, purchase(occurred_at=not_rfc3339)) == [("occurred_at",)]


def test_an_occurred_at_sent_as_a_number_is_invalid():
    assert errors_of(Purchase, purchase(occurred_at=1793668500)) == [("occurred_at",)]


def test_a_timestamp_in_utc_z_form_is_accepted_and_equals_the_jst_one():
    in_utc = parse(Purchase, purchase(occurred_at="2026-11-03T01:15:00Z"))
    in_jst = parse(Purchase, purchase(occurred_at="2026-11-03T10:15:00+09:00"))

    assert in_utc.occurred_at == in_jst.occurred_at


def test_an_occurred_at_more_than_five_minutes_ahead_is_invalid():
    assert errors_of(Purchase, purchase(occurred_at=at(timedelta(minutes=5, seconds=1)))) == [()]


def test_four_minutes_ahead_is_still_valid():
    assert parse(Purchase, purchase(occurred_at=at(timedelta(minutes=4)))).occurred_at == NOW + timedelta(minutes=4)


def test_exactly_five_minutes_ahead_is_still_valid():
    assert parse(Purchase, purchase(occurred_at=at(timedelta(minutes=5)))).occurred_at == NOW + timedelta(minutes=5)


def test_an_occurred_at_long_past_is_valid():
    assert parse(LineChange, line_change(occurred_at="2026-01-01T00:00:00+09:00"))


# ---- shapes and types ---------------------------------------------------------------------------

def test_unknown_fields_are_invalid():
    assert errors_of(Purchase, purchase(coupon="WELCOME")) == [("coupon",)]
    assert errors_of(SetLimits, set_limits(limit=5000)) == [("limit",)]


@pytest.mark.parametrize(("model", "body", "field"), [
    (Purchase, purchase(quantity="1"), "quantity"),
    (Purchase, purchase(unit_price="525"), "unit_price"),
    (SetLimits, set_limits(line_limit="10000"), "line_limit"),
])
def test_an_integer_sent_as_a_string_is_invalid(model: type, body: dict[str, Any], field: str):
    assert errors_of(model, body) == [(field,)]


@pytest.mark.parametrize(("model", "body", "field"), [
    (Purchase, purchase(quantity=True), "quantity"),
    (Purchase, purchase(unit_price=False), "unit_price"),
    (SetLimits, set_limits(line_limit=True), "line_limit"),
])
def test_a_boolean_where_an_integer_is_expected_is_invalid(model: type, body: dict[str, Any], field: str):
    assert errors_of(model, body) == [(field,)]


@pytest.mark.parametrize("price", [525.0, 525.5])
def test_a_float_unit_price_is_invalid(price: float):
    assert errors_of(Purchase, purchase(unit_price=price)) == [("unit_price",)]


def test_a_negative_unit_price_is_invalid():
    assert errors_of(Purchase, purchase(unit_price=-1)) == [("unit_price",)]


def test_unit_price_is_optional():
    body = purchase()
    del body["unit_price"]

    assert parse(Purchase, body).unit_price is None


def test_quantity_defaults_to_1():
    body = purchase()
    del body["quantity"]

    assert parse(Purchase, body).quantity == 1


@pytest.mark.parametrize("quantity", [0, -1])
def test_quantity_0_or_below_is_invalid(quantity: int):
    assert errors_of(Purchase, purchase(quantity=quantity)) == [("quantity",)]


def test_a_large_quantity_is_left_to_the_decision():
    assert parse(Purchase, purchase(quantity=100)).quantity == 100  # INVALID_QUANTITY is a decision


@pytest.mark.parametrize("flag", [0, "false", None])
def test_a_boolean_sent_as_anything_else_is_invalid(flag: Any):
    assert errors_of(SetRestriction, set_restriction(restricted=flag)) == [("restricted",)]


@pytest.mark.parametrize("signature", ["0" * 63, "A" * 64, "g" * 64, ""])
def test_a_signature_is_64_lowercase_hex_digits(signature: str):
    assert errors_of(Purchase, purchase(signature=signature)) == [("signature",)]


# ---- identifiers --------------------------------------------------------------------------------

@pytest.mark.parametrize("message_id", ["a", "A-z.0_9:x", "x" * 128])
def test_a_message_id_of_1_to_128_allowed_characters_is_valid(message_id: str):
    assert parse(Purchase, purchase(message_id=message_id)).message_id == message_id


def test_a_message_id_of_129_characters_is_invalid():
    assert errors_of(Purchase, purchase(message_id="x" * 129)) == [("message_id",)]


def test_an_empty_message_id_is_invalid():
    assert errors_of(Purchase, purchase(message_id="")) == [("message_id",)]


@pytest.mark.parametrize("message_id", ["pa 0001", "pa/0001", "pa#1", "pa-0001\n", "ｐａ-0001", "注文-1"])
def test_a_message_id_with_other_characters_is_invalid(message_id: str):
    assert errors_of(Purchase, purchase(message_id=message_id)) == [("message_id",)]


def test_a_message_id_sent_as_a_number_is_invalid():
    assert errors_of(Purchase, purchase(message_id=1)) == [("message_id",)]


@pytest.mark.parametrize("passport_id", ["usr", "u" * 61, "user-01", "user 01", "ｕｓｅｒ01", "ユーザー01", ""])
def test_a_malformed_passport_id_is_invalid(passport_id: str):
    assert errors_of(Purchase, purchase(passport_id=passport_id)) == [("passport_id",)]


@pytest.mark.parametrize("customer_id", ["CAF000001257", "CAF00000125730", "caf0000012573", "CAF000001257３",
                                         "COP0000012573", " CAF0000012573", ""])
def test_a_malformed_customer_id_is_invalid(customer_id: str):
    assert errors_of(LineChange, line_change(customer_id=customer_id)) == [("customer_id",)]


# ---- message rules ------------------------------------------------------------------------------

def test_set_limits_needs_at_least_one_limit():
    body = set_limits()
    del body["line_limit"]

    assert errors_of(SetLimits, body) == [()]


def test_set_limits_with_only_passport_limits_is_valid():
    body = set_limits(passport_limits={"user01": 3000, "user02": None})
    del body["line_limit"]

    assert parse(SetLimits, body).passport_limits == {"user01": 3000, "user02": None}


def test_a_passport_limit_for_a_malformed_passport_id_is_invalid():
    assert errors_of(SetLimits, set_limits(passport_limits={"u1": 3000}))


def test_set_restriction_with_a_null_passport_id_restricts_the_whole_line():
    assert parse(SetRestriction, set_restriction(passport_id=None)).passport_id is None


@pytest.mark.parametrize("change", ["number_change", "billing_phone_change", "individual_billing",
                                    "wide_area_billing"])
def test_billing_number_line_changes_need_new_billing_account(change: str):
    assert errors_of(LineChange, line_change(change=change)) == [()]
    assert parse(LineChange, line_change(change=change, new_billing_account="0012345678")).new_billing_account


@pytest.mark.parametrize("account", ["06-1234-5678", "03-1234-5678", "0120-123-456", "0012345678"])
def test_a_new_billing_account_is_a_phone_number_or_a_00_number(account: str):
    assert parse(LineChange, line_change(change="number_change", new_billing_account=account))


@pytest.mark.parametrize("account", ["0612345678X", "1234567890", "06-1234-5678 ", "0112345678", ""])
def test_any_other_new_billing_account_is_invalid(account: str):
    assert errors_of(LineChange, line_change(change="number_change", new_billing_account=account)) == [
        ("new_billing_account",)]


def test_other_line_changes_do_not_need_a_new_billing_account():
    assert parse(LineChange, line_change(change="rename")).new_billing_account is None


def test_an_unknown_line_change_is_invalid():
    assert errors_of(LineChange, line_change(change="relocate")) == [("change",)]


def test_customer_id_changed_defaults_to_false():
    body = line_change()
    del body["customer_id_changed"]

    assert parse(LineChange, body).customer_id_changed is False


# ---- secrets ------------------------------------------------------------------------------------

def test_the_access_key_never_appears_in_repr_or_str_of_the_model():
    message = parse(SetLimits, set_limits())

    assert ACCESS_KEY not in repr(message)
    assert ACCESS_KEY not in str(message)
    assert ACCESS_KEY not in message.model_dump_json()
    assert message.access_key.get_secret_value() == ACCESS_KEY


_LEAKS = pytest.mark.xfail(  # until messages.py hides inputs; then these cases run as plain tests
    not SetLimits.model_config.get("hide_input_in_errors"), strict=True,
    reason="messages.py echoes the whole body as input_value of a missing-field or model-level error; "
           "needs hide_input_in_errors=True")


@pytest.mark.parametrize(("model", "body"), [
    pytest.param(SetLimits, set_limits(customer_id="CAF1"), id="malformed customer_id"),
    pytest.param(SetLimits, set_limits(line_limit="10000"), id="line_limit as a string"),
    pytest.param(SetLimits, set_limits(note="hi"), id="unknown field"),
    pytest.param(SetLimits, set_limits(occurred_at="2026-11-11T12:00:00"), id="naive occurred_at"),
    pytest.param(SetRestriction, {k: v for k, v in set_restriction().items() if k != "restricted"},
                 id="missing restricted", marks=_LEAKS),
    pytest.param(SetLimits, {k: v for k, v in set_limits().items() if k != "line_limit"},
                 id="no limit at all", marks=_LEAKS),
    pytest.param(SetLimits, set_limits(occurred_at=at(timedelta(minutes=6))), id="occurred_at ahead", marks=_LEAKS),
])
def test_the_access_key_never_appears_in_a_validation_error_for_another_field(model: type, body: dict[str, Any]):
    with pytest.raises(ValidationError) as caught:
        parse(model, body)

    assert ACCESS_KEY not in str(caught.value)
    assert ACCESS_KEY not in repr(caught.value)
