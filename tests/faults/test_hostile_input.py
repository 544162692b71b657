"""Hostile input is contained: whatever arrives as a task's arguments, the bus answers with a
decision or a quarantine entry — never an exception (which a worker would retry, then quarantine
PROCESSING_FAILED, or, if transient, retry forever), and never a secret in the database.

Property-based over every inbound task (all seven names) and every inbound message model, on the
embedded SQLite; a corpus of the nastiest cases also on PostgreSQL (the shared server, nothing is
restarted): arbitrary JSON, huge strings and integers, 10,000-level nesting, wrong types,
NaN/Infinity, lone surrogates and NUL, bytes, 1 MB bodies, non-object arguments, extra positional
and keyword arguments, valid messages with one field made hostile.

What arrives from Celery is already decoded, so deep structures are built directly (json.dumps of
them would itself fail). A body Celery cannot decode at all never reaches the bus: see
test_poison_and_forgery.py.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import MetaData, select

from matomete_core.adapters.migrate import upgrade
from matomete_core.config import Settings
from matomete_core.messages import INBOUND, parse
from matomete_core.reasons import Quarantine
from matomete_core.service import bus
from matomete_core.service.deps import Deps, bootstrap
from matomete_core.service.loading import load_catalog, load_lines
from matomete_core.testing import FakePublisher, signed
from tests.faults.harness import Tally, report
from tests.unit.conftest import CATALOG, LINES, SECRETS

NOW = datetime.now(timezone.utc).replace(microsecond=0)
AT = (NOW - timedelta(minutes=1)).isoformat()
ACCESS_KEY = "ABCD1234"
TASKS = sorted(INBOUND)
assert len(TASKS) == 7, TASKS
STATUSES = {"accepted", "rejected", "held", "quarantined"}
QUARANTINE_REASONS = {q.value for q in Quarantine}
DECISION_KEYS = {"message_id", "status", "reason", "application_number", "billing_month", "replayed"}


def valid(task: str, n: int = 0) -> dict[str, Any]:
    """A well-formed message for ``task`` (signed, for a provider's)."""
    mid = f"ok-{task.split('.')[1]}-{n}"
    if task in ("matomete.purchase", "matomete.cancel"):
        body = {"message_id": mid, "occurred_at": AT, "provider_id": "PB", "order_id": f"o-{n}"}
        if task == "matomete.purchase":
            body.update(passport_id="user03", content_id="coin", quantity=1)
        return signed(body, SECRETS["PB"])
    if task == "matomete.line_change":
        return {"message_id": mid, "occurred_at": AT, "customer_id": "CAF0000012573", "change": "rename"}
    base = {"message_id": mid, "occurred_at": AT, "customer_id": "CAF0000012573", "access_key": ACCESS_KEY}
    return {**base, **{
        "matomete.set_restriction": {"passport_id": "user03", "restricted": False},
        "matomete.set_limits": {"line_limit": 10000},
        "matomete.register_passport_id": {"passport_id": "user77"},
        "matomete.update_registration": {"passport_id": "user03"},
    }[task]}


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


NASTY_STRINGS = ["\ud800", "\udfff", "a\x00b", "\x00", "\ufeff", "ｍ-1", "𠮷", "\u202e", "' OR 1=1 --", "%s%n",
                 "9" * 400, "\\u0000"]
NASTY_VALUES: list[Any] = [
    float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 10**40, -(10**40), 2**63, -1, 0, True, None, [], {},
    b"\xff\xfe\x00", "1", "", " ", *NASTY_STRINGS, deep(100), deep(10_000), "x" * 1_000_000,
    {"$ref": "#"}, [1, [2, [3]]], {"signature": "0" * 64},
]


def corpus() -> list[tuple[str, tuple, dict]]:
    """(task, args, kwargs): hostile whole arguments, then each valid message with one field made hostile."""
    cases: list[tuple[str, tuple, dict]] = []
    for task in TASKS:
        good = valid(task)
        for args in ((), (good, good), ("a string",), (42,), (None,), ([good],), (deep(10_000),),
                     ({"x" * 1000: "y" * 1_000_000},), (json.loads('{"\\ud800": "\\udfff"}'),)):
            cases.append((task, args, {}))
        cases.append((task, (good,), {"extra": 1}))
        cases.append((task, (), {"message": good}))
        for key in list(good):
            cases.append((task, ({k: v for k, v in good.items() if k != key},), {}))
            for value in NASTY_VALUES:
                cases.append((task, ({**good, key: value},), {}))
        for extra_key in ("extra", "\ud800", "a\x00b", "", "signature_v2"):
            cases.append((task, ({**good, extra_key: "x"},), {}))
    return cases


CORPUS = corpus()


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def _report_the_properties():  # noqa: ANN202
    yield
    TALLY.report_all()


def contained(decision: Any) -> None:
    """A decision as the contract describes it: JSON, a known status, a known quarantine reason."""
    assert isinstance(decision, dict) and set(decision) == DECISION_KEYS, decision
    assert decision["status"] in STATUSES, decision
    if decision["status"] == "quarantined":
        assert decision["reason"] in QUARANTINE_REASONS, decision
    json.dumps(decision, allow_nan=False).encode("utf-8")


def stored_text(d: Deps) -> str:
    """Every value in every table, as text: what a grep of the database would see."""
    meta = MetaData()
    meta.reflect(d.engine)
    parts: list[str] = []
    with d.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


def assert_no_secret_stored(d: Deps, signatures: set[str]) -> None:
    text = stored_text(d)
    for secret in (*SECRETS.values(), ACCESS_KEY):
        assert secret not in text, f"secret {secret!r} stored in clear"
    leaked = [s for s in signatures if s in text]
    assert not leaked, f"{len(leaked)} signatures stored, e.g. {leaked[:2]}"


def signatures_in(value: Any, found: set[str], depth: int = 0) -> set[str]:
    """The well-formed signatures in the first levels of ``value`` (where the valid messages put them)."""
    if depth > 4:
        return found
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "signature" and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v):
                found.add(v)
            signatures_in(v, found, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            signatures_in(v, found, depth + 1)
    return found


# ---- the corpus, on SQLite and on PostgreSQL ------------------------------------------------------------

def run_corpus(d: Deps) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    signatures: set[str] = set()
    for task, args, kwargs in CORPUS:
        decision = bus.handle(d, task, args, kwargs, now=NOW)
        contained(decision)
        key = decision["status"] if decision["status"] != "quarantined" else decision["reason"]
        statuses[key] = statuses.get(key, 0) + 1
        signatures_in(list(args), signatures)
    assert_no_secret_stored(d, signatures)
    return statuses


def test_the_hostile_corpus_ends_in_decisions_and_quarantine_on_sqlite(deps):
    outcome = run_corpus(deps)
    report("hostile input (corpus, SQLite)", sent=len(CORPUS), decided=sum(outcome.values()), lost=0, doubled=0,
           outcomes=outcome, unhandled_exceptions=0, secrets_stored=0)


@pytest.fixture
def pg_bus(pg_url: str, tmp_path: Path) -> Deps:
    upgrade(pg_url)
    settings = Settings(database_url=pg_url, secret_key=Fernet.generate_key().decode())
    d = bootstrap(settings, publisher=FakePublisher())
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (tmp_path / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(d.engine, d.secrets, tmp_path / "catalog.json")
    load_lines(d.engine, settings, tmp_path / "lines.json")
    yield d
    d.engine.dispose()


def test_the_hostile_corpus_ends_in_decisions_and_quarantine_on_postgresql(pg_bus):
    outcome = run_corpus(pg_bus)
    report("hostile input (corpus, PostgreSQL)", sent=len(CORPUS), decided=sum(outcome.values()), lost=0,
           doubled=0, outcomes=outcome, unhandled_exceptions=0, secrets_stored=0)


# ---- properties --------------------------------------------------------------------------------------

any_text = st.one_of(st.text(st.characters(exclude_categories=()), max_size=40), st.sampled_from(NASTY_STRINGS))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
                      st.floats(allow_nan=True, allow_infinity=True), any_text, st.binary(max_size=8))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(any_text, kids, max_size=4)),
                          max_leaves=12)


@st.composite
def hostile_call(draw) -> tuple[str, list, dict]:  # noqa: ANN001
    task = draw(st.sampled_from(TASKS))
    good = valid(task, draw(st.integers(0, 3)))
    shape = draw(st.sampled_from(["arbitrary", "mutated", "mutated", "dropped", "args", "kwargs"]))
    if shape == "arbitrary":
        return task, [draw(json_value)], {}
    if shape == "mutated":  # a well-formed message, some fields replaced or added
        body = dict(good)
        for key in draw(st.lists(st.one_of(st.sampled_from(sorted(good)), any_text), min_size=1, max_size=3)):
            body[key] = draw(json_value)
        return task, [body], {}
    if shape == "dropped":
        keys = draw(st.lists(st.sampled_from(sorted(good)), min_size=1, max_size=3, unique=True))
        return task, [{k: v for k, v in good.items() if k not in keys}], {}
    if shape == "args":
        return task, draw(st.lists(st.one_of(json_value, st.just(good)), max_size=3)), {}
    return task, [good], draw(st.dictionaries(st.text(max_size=5), json_value, min_size=1, max_size=2))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(call=hostile_call())
# (10,000-level nesting is in the corpus above: hypothesis cannot print an example that deep)
@example(call=("matomete.cancel", [{**valid("matomete.cancel"), "order_id": "x" * 1_000_000}], {}))
def test_any_arguments_to_any_task_end_in_a_decision_or_a_quarantine_entry(deps, call):
    task, args, kwargs = call
    TALLY.add("hostile input (hypothesis, any arguments)", examples=1, sent=1)
    decision = bus.handle(deps, task, args, kwargs, now=NOW)
    contained(decision)
    TALLY.add("hostile input (hypothesis, any arguments)", decided=1, quarantined=decision["status"] == "quarantined")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(hostile_call(), min_size=5, max_size=15))
def test_no_hostile_message_leaves_a_secret_in_the_database(deps, calls):
    signatures: set[str] = set()
    for task, args, kwargs in calls:
        contained(bus.handle(deps, task, args, kwargs, now=NOW))
        signatures_in(args, signatures)
    assert_no_secret_stored(deps, signatures)
    TALLY.add("hostile input (hypothesis, secrets)", examples=1, sent=len(calls), decided=len(calls),
              signatures_checked=len(signatures))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(sorted(INBOUND)), body=json_value)
def test_every_inbound_model_rejects_what_it_cannot_parse_with_a_validation_error(model, body):
    """The bus turns these four into INVALID_MESSAGE; anything else would escape it."""
    try:
        parse(INBOUND[model], body, now=NOW)
    except (ValidationError, ValueError, TypeError, RecursionError):
        pass
