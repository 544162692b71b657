"""The published JSON Schemas match the models, and every example is valid on both sides."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from jsonschema import Draft202012Validator, FormatChecker

from matomete_core import messages
from matomete_core.schemas import render_all, schema_name

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
SIGNING_SECRETS = {"PA": "s3cret-A", "PB": "s3cret-B"}  # as schemas/examples/README.md says
INBOUND = {schema_name(m): m for m in messages.INBOUND.values()}
OUTBOUND = {schema_name(m): m for m in messages.OUTBOUND}
SIGNED = {schema_name(messages.Purchase), schema_name(messages.Cancel)}

FORMATS = FormatChecker()  # jsonschema checks "date-time" only with rfc3339-validator installed
if "date-time" not in FORMATS.checkers:
    @FORMATS.checks("date-time", raises=ValueError)
    def _is_date_time(value: object) -> bool:
        return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


def schema_of(example: Path) -> str:
    return example.name.split(".")[0]


def load_schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), format_checker=FORMATS)


def test_the_committed_schemas_are_the_generated_ones():
    rendered = render_all()
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.json")}

    drifted = sorted(n for n in rendered.keys() | committed.keys() if rendered.get(n) != committed.get(n))

    assert not drifted, f"schemas/ has drifted from the models ({', '.join(drifted)}): " \
                        "run `python -m matomete_core.schemas` and commit the result"


def test_there_is_one_schema_per_message_with_its_id():
    assert set(render_all()) == {f"{n}.json" for n in INBOUND | OUTBOUND}
    assert len(INBOUND) + len(OUTBOUND) == 13
    for name in INBOUND | OUTBOUND:
        schema = load_schema(name)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"https://matomete.example/schemas/{name}.json"
        assert schema["title"] and schema["description"]
        assert schema["additionalProperties"] is False


def test_format_checking_covers_date_time():
    assert FORMATS.conforms("2026-11-03T10:15:00+09:00", "date-time")
    assert not FORMATS.conforms("2026-02-30T10:15:00+09:00", "date-time")


def test_every_schema_has_an_example():
    assert {schema_of(p) for p in EXAMPLES} == set(INBOUND) | set(OUTBOUND)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_an_example_is_valid_against_its_schema(example: Path):
    errors = [e.message for e in validator(schema_of(example)).iter_errors(json.loads(example.read_text("utf-8")))]

    assert not errors


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_an_example_round_trips_through_json_and_its_model(example: Path):
    text = example.read_text(encoding="utf-8")
    body = json.loads(json.dumps(json.loads(text)))  # as the broker carries it

    if schema_of(example) in INBOUND:
        message = messages.parse(INBOUND[schema_of(example)], body, now=NOW)
        again = message.model_dump(mode="json", exclude_unset=True)
        if "access_key" in body:
            assert message.access_key.get_secret_value() == body["access_key"]
            again["access_key"] = body["access_key"]
    else:
        message = OUTBOUND[schema_of(example)].model_validate_json(text)
        again = message.model_dump(mode="json")

    assert again == body


@pytest.mark.parametrize("example", [p for p in EXAMPLES if schema_of(p) in INBOUND], ids=lambda p: p.name)
def test_an_unknown_field_is_refused_by_the_schema_and_the_model_alike(example: Path):
    body = {**json.loads(example.read_text(encoding="utf-8")), "note": "hello"}

    assert not validator(schema_of(example)).is_valid(body)
    with pytest.raises(ValidationError):
        messages.parse(INBOUND[schema_of(example)], body, now=NOW)


@pytest.mark.parametrize("example", [p for p in EXAMPLES if schema_of(p) in SIGNED], ids=lambda p: p.name)
def test_a_provider_example_carries_its_providers_signature(example: Path):
    message = json.loads(example.read_text(encoding="utf-8"))
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    signed_text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    expected = hmac.new(SIGNING_SECRETS[message["provider_id"]].encode(), signed_text.encode("utf-8"),
                        hashlib.sha256).hexdigest()

    assert hmac.compare_digest(message["signature"], expected)


def test_the_invoice_example_is_the_guides():
    invoice = json.loads((SCHEMAS / "examples" / "invoice.json").read_text(encoding="utf-8"))

    assert invoice["billing_account"] == "06-1234-5678"
    assert [(i["provider_name"], i["content_name"], i["amount"]) for i in invoice["items"]] == [
        ("A社", "パックサービス", 525), ("B社", "名作アニメ1", 300), ("B社", "名作アニメ2", 300)]
    assert invoice["total"] == sum(i["amount"] for i in invoice["items"]) == 1125
