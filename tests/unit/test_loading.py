"""``catalog load`` and ``lines load``: idempotent upserts; a bad file is one line and changes nothing;
access keys are kept only as scrypt hashes and signing secrets never in clear."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from matomete_core.adapters.tables import metadata
from matomete_core.errors import InvalidFile
from matomete_core.security import access_key_matches
from matomete_core.service import bus
from matomete_core.service.loading import load_catalog, load_lines
from matomete_core.testing import over_the_wire
from tests.unit.conftest import CATALOG, LINES, SECRETS, jst

ACCESS_KEYS = {line["customer_id"]: line["access_key"] for line in LINES["lines"]}
NOW = jst("2026-08-10 12:00")


# ---- helpers ------------------------------------------------------------------------------------

def snapshot(deps) -> dict[str, list[tuple]]:
    """Every row of every table, in primary-key order."""
    out = {}
    with deps.engine.connect() as conn:
        for table in metadata.sorted_tables:
            order = list(table.primary_key.columns) or list(table.columns)
            out[table.name] = [tuple(r) for r in conn.execute(select(table).order_by(*order)).all()]
    return out


def counts(deps) -> dict[str, int]:
    return {name: len(rows) for name, rows in snapshot(deps).items()}


def text_values(deps) -> list[tuple[str, str, str]]:
    """(table, column, value) for every non-null value of every column, as text."""
    found = []
    with deps.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)).mappings().all():
                for column, value in row.items():
                    if value is not None:
                        found.append((table.name, column,
                                      value if isinstance(value, str) else json.dumps(value, default=str,
                                                                                     ensure_ascii=False)))
    return found


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def reload_catalog(deps, path: Path) -> dict[str, int]:
    return load_catalog(deps.engine, deps.secrets, path)


def reload_lines(deps, path: Path) -> dict[str, int]:
    return load_lines(deps.engine, deps.settings, path)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


# ---- idempotent upserts -------------------------------------------------------------------------

def test_loading_the_same_catalog_twice_changes_nothing(deps, tmp_path):
    # given the fixture's catalog, loaded once
    before = snapshot(deps)
    path = write(tmp_path, "again.json", CATALOG)
    # when it is loaded again
    summary = reload_catalog(deps, path)
    # then the summary counts the file and every row is as it was, secrets still readable
    assert summary == {"providers": 2, "contents": 5}
    after = snapshot(deps)
    assert {k: v for k, v in after.items() if k != "providers"} == \
           {k: v for k, v in before.items() if k != "providers"}
    assert len(after["providers"]) == 2
    with deps.engine.connect() as conn:
        from matomete_core.adapters.tables import providers
        sealed = dict(conn.execute(select(providers.c.provider_id, providers.c.signing_secrets)).all())
    assert {p: deps.secrets.open(s) for p, s in sealed.items()} == {p: [s] for p, s in SECRETS.items()}


def test_a_changed_price_is_updated_on_reload_and_the_counts_stay(deps, tmp_path):
    # given the catalog with B社's コイン at 120 yen instead of 100
    before = counts(deps)
    changed = copy.deepcopy(CATALOG)
    changed["providers"][1]["contents"][2]["unit_price"] = 120
    changed["providers"][1]["contact"]["phone"] = "0120-222-222"
    # when it is loaded twice
    reload_catalog(deps, write(tmp_path, "changed.json", changed))
    reload_catalog(deps, write(tmp_path, "changed.json", changed))
    # then the price and the contact are updated in place
    from matomete_core.adapters.tables import contents, providers
    with deps.engine.connect() as conn:
        price = conn.execute(select(contents.c.unit_price).where(
            contents.c.provider_id == "PB", contents.c.content_id == "coin")).scalar_one()
        phone = conn.execute(select(providers.c.contact_phone).where(providers.c.provider_id == "PB")).scalar_one()
    assert (price, phone) == (120, "0120-222-222")
    assert counts(deps) == before


def test_a_purchase_after_a_price_change_is_charged_the_new_price(deps, provider, tmp_path):
    changed = copy.deepcopy(CATALOG)
    changed["providers"][1]["contents"][2]["unit_price"] = 120
    reload_catalog(deps, write(tmp_path, "changed.json", changed))
    decision = provider.buy("user01", "coin", NOW, unit_price=120)
    assert decision["status"] == "accepted"


def test_loading_the_same_lines_twice_changes_nothing_but_the_salt(deps, tmp_path):
    # given the fixture's lines, loaded once
    before = snapshot(deps)
    # when they are loaded again
    summary = reload_lines(deps, write(tmp_path, "again.json", LINES))
    # then only the access-key hashes differ (a new salt), and they still match the keys
    assert summary == {"lines": 3, "passport_ids": 7}
    after = snapshot(deps)
    assert {k: v for k, v in after.items() if k != "lines"} == {k: v for k, v in before.items() if k != "lines"}
    from matomete_core.adapters.tables import lines
    strip = lambda rows: [tuple(v for c, v in zip(lines.columns.keys(), r) if c != "access_key_hash")  # noqa: E731
                          for r in rows]
    assert strip(after["lines"]) == strip(before["lines"])
    with deps.engine.connect() as conn:
        stored = dict(conn.execute(select(lines.c.customer_id, lines.c.access_key_hash)).all())
    assert all(access_key_matches(ACCESS_KEYS[c], h) for c, h in stored.items())


def test_a_reload_updates_the_operators_fields_but_keeps_the_customers_limits(deps, tmp_path):
    # given the lines with a new line limit, a new billing account and user02's limit raised
    # (limits and restrictions are the customer's once the line exists: self-service sets them)
    before = counts(deps)
    changed = copy.deepcopy(LINES)
    changed["lines"][0]["line_limit"] = 20000
    changed["lines"][0]["billing_account"] = "06-9999-0000"
    changed["lines"][0]["passport_ids"][1]["limit"] = 3000
    # when loaded twice
    reload_lines(deps, write(tmp_path, "changed.json", changed))
    reload_lines(deps, write(tmp_path, "changed.json", changed))
    # then
    from matomete_core.adapters.tables import line_billing, lines, passport_ids
    with deps.engine.connect() as conn:
        limit = conn.execute(select(lines.c.line_limit).where(lines.c.customer_id == "CAF0000012573")).scalar_one()
        account = conn.execute(select(line_billing.c.billing_account).where(
            line_billing.c.customer_id == "CAF0000012573")).scalar_one()
        own = conn.execute(select(passport_ids.c.limit).where(passport_ids.c.passport_id == "user02")).scalar_one()
    assert (limit, account, own) == (10000, "06-9999-0000", 1000)
    assert counts(deps) == before


def test_a_line_without_a_limit_gets_the_default(deps):
    from matomete_core.adapters.tables import lines
    with deps.engine.connect() as conn:
        limit = conn.execute(select(lines.c.line_limit).where(lines.c.customer_id == "CAF0000099999")).scalar_one()
    assert limit == deps.settings.default_line_limit == 10_000


# ---- a bad file: one line naming the record and the field, and nothing changed --------------------

def _lines_with(mutate) -> dict:  # noqa: ANN001
    """The fixture's lines with an extra valid line first and line 0's limit changed, then ``mutate``d:
    a partial load would show."""
    doc = copy.deepcopy(LINES)
    doc["lines"].insert(0, {"customer_id": "CAF0000000777", "access_service": "hikari_next",
                            "access_key": "NEWKEY77", "billing_account": "03-7777-7777", "line_limit": 5000,
                            "passport_ids": [{"passport_id": "fresh777", "status": "registered"}]})
    doc["lines"][1]["line_limit"] = 9000
    mutate(doc)
    return doc


def _del(d: dict, key: str) -> None:
    del d[key]


BAD_LINES = {
    "a missing field": (lambda doc: _del(doc["lines"][2], "billing_account"),
                        ["lines[2]", "CAF0000000002", "billing_account"]),
    "a wrong type": (lambda doc: doc["lines"][3].update(line_limit="10000"),
                     ["lines[3]", "CAF0000099999", "line_limit"]),
    "a string for a boolean": (lambda doc: doc["lines"][2].update(restricted="true"),
                               ["CAF0000000002", "restricted"]),
    "a bad passport id": (lambda doc: doc["lines"][1]["passport_ids"][2].update(passport_id="u!"),
                          ["lines[1]", "CAF0000012573", "passport_id"]),
    "a bad customer id": (lambda doc: doc["lines"][2].update(customer_id="CAF12"), ["lines[2]", "customer_id"]),
    "an unknown field": (lambda doc: doc["lines"][2].update(access_key_hash="x"),
                         ["CAF0000000002", "access_key_hash"]),
    "a bad status": (lambda doc: doc["lines"][1]["passport_ids"][0].update(status="deleted"),
                     ["CAF0000012573", "status"]),
    "a naive registered_at": (lambda doc: doc["lines"][1]["passport_ids"][0].update(
        registered_at="2019-04-01T10:00:00"), ["CAF0000012573", "registered_at"]),
    "a negative limit": (lambda doc: doc["lines"][1]["passport_ids"][0].update(limit=-1),
                         ["CAF0000012573", "limit"]),
    "a line limit above the maximum": (lambda doc: doc["lines"][2].update(line_limit=50_001),
                                       ["lines[2]", "CAF0000000002", "line_limit", "50000"]),
    "per-ID limits summing above the line limit": (
        lambda doc: doc["lines"][2].update(line_limit=1000, passport_ids=[
            {"passport_id": "lineblk1", "status": "registered", "limit": 600},
            {"passport_id": "lineblk2", "status": "registered", "limit": 500}]),
        ["lines[2]", "CAF0000000002", "passport_ids", "1100"]),
    "one ID twice in the file": (
        lambda doc: doc["lines"][3]["passport_ids"].append({"passport_id": "user01", "status": "registered"}),
        ["CAF0000099999", "user01"]),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_lines_file_changes_nothing(deps, tmp_path, case):
    # given
    mutate, names = BAD_LINES[case]
    path = write(tmp_path, "bad-lines.json", _lines_with(mutate))
    before = snapshot(deps)
    # when
    with pytest.raises(InvalidFile) as exc:
        reload_lines(deps, path)
    # then one line naming the file, the record and the field, and nothing changed
    message = one_line(exc)
    assert str(path) in message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert snapshot(deps) == before


def test_a_passport_id_owned_by_another_line_is_refused_and_changes_nothing(deps, tmp_path):
    # given a file (a different line) that claims user01, which the DB gives to CAF0000012573
    doc = {"lines": [
        {"customer_id": "CAF0000000777", "access_service": "hikari_next", "access_key": "NEWKEY77",
         "billing_account": "03-7777-7777", "passport_ids": [{"passport_id": "fresh777", "status": "registered"}]},
        {"customer_id": "CAF0000000888", "access_service": "hikari_next", "access_key": "NEWKEY88",
         "billing_account": "03-8888-8888", "passport_ids": [{"passport_id": "user01", "status": "registered"}]}]}
    path = write(tmp_path, "steal.json", doc)
    before = snapshot(deps)
    # when
    with pytest.raises(InvalidFile) as exc:
        reload_lines(deps, path)
    # then
    message = one_line(exc)
    assert "user01" in message and "passport_id" in message and "CAF0000012573" in message
    assert snapshot(deps) == before


def test_a_line_may_reload_its_own_passport_ids(deps, tmp_path):
    doc = {"lines": [copy.deepcopy(LINES["lines"][0])]}
    assert reload_lines(deps, write(tmp_path, "own.json", doc)) == {"lines": 1, "passport_ids": 5}


@pytest.mark.parametrize("text, fragment", [
    ("{\"lines\": [", "not a JSON document"),
    ("", "not a JSON document"),
    ("[]", "file"),
    ("{\"lines\": {}}", "lines"),
    ("{}", "lines"),
])
def test_a_lines_file_that_is_not_the_right_document_changes_nothing(deps, tmp_path, text, fragment):
    path = write(tmp_path, "broken.json", text)
    before = snapshot(deps)
    with pytest.raises(InvalidFile) as exc:
        reload_lines(deps, path)
    message = one_line(exc)
    assert str(path) in message and fragment in message
    assert snapshot(deps) == before


def test_a_file_in_another_encoding_is_one_line(deps, tmp_path):
    path = tmp_path / "sjis.json"
    path.write_bytes(json.dumps(CATALOG, ensure_ascii=False).encode("shift_jis"))
    before = snapshot(deps)
    with pytest.raises(InvalidFile) as exc:
        reload_catalog(deps, path)
    assert str(path) in one_line(exc)
    assert snapshot(deps) == before


@pytest.mark.parametrize("loader", ["catalog", "lines"])
def test_a_missing_file_is_one_line(deps, tmp_path, loader):
    path = tmp_path / "nowhere.json"
    before = snapshot(deps)
    with pytest.raises(InvalidFile) as exc:
        (reload_catalog if loader == "catalog" else reload_lines)(deps, path)
    message = one_line(exc)
    assert str(path) in message and "no such file" in message
    assert snapshot(deps) == before


def _catalog_with(mutate) -> dict:  # noqa: ANN001
    """The fixture's catalog with a new provider first and a price changed, then ``mutate``d."""
    doc = copy.deepcopy(CATALOG)
    doc["providers"].insert(0, {"provider_id": "PN", "name": "N社", "signing_secret": "new-secret-N",
                                "contents": [{"content_id": "n1", "name": "N", "price_type": "per_use",
                                              "unit_price": 10}]})
    doc["providers"][1]["contents"][0]["unit_price"] = 999
    mutate(doc)
    return doc


BAD_CATALOGS = {
    "a missing field": (lambda doc: _del(doc["providers"][2], "name"), ["providers[2]", "PB", "name"]),
    "a missing content field": (lambda doc: _del(doc["providers"][2]["contents"][1], "price_type"),
                                ["providers[2]", "PB", "contents", "price_type"]),
    "a wrong type": (lambda doc: doc["providers"][2]["contents"][2].update(unit_price="100"),
                     ["providers[2]", "PB", "unit_price"]),
    "a float price": (lambda doc: doc["providers"][1]["contents"][0].update(unit_price=525.0),
                      ["providers[1]", "PA", "unit_price"]),
    "a bad price type": (lambda doc: doc["providers"][1]["contents"][0].update(price_type="yearly"),
                         ["PA", "price_type"]),
    "a short signing secret": (lambda doc: doc["providers"][2].update(signing_secret="short"),
                               ["PB", "signing_secret"]),
    "a bad provider id": (lambda doc: doc["providers"][2].update(provider_id="P B"), ["providers[2]", "provider_id"]),
    "a content twice": (lambda doc: doc["providers"][2]["contents"].append(doc["providers"][2]["contents"][0]),
                        ["PB", "content_id"]),
    "a provider twice": (lambda doc: doc["providers"].append(copy.deepcopy(doc["providers"][1])),
                         ["PA", "provider_id"]),
}


@pytest.mark.parametrize("case", list(BAD_CATALOGS))
def test_a_bad_catalog_changes_nothing(deps, tmp_path, case):
    mutate, names = BAD_CATALOGS[case]
    path = write(tmp_path, "bad-catalog.json", _catalog_with(mutate))
    before = snapshot(deps)
    with pytest.raises(InvalidFile) as exc:
        reload_catalog(deps, path)
    message = one_line(exc)
    assert str(path) in message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert snapshot(deps) == before


def test_a_bad_message_never_echoes_the_secret_it_carries(deps, tmp_path):
    doc = _catalog_with(lambda d: d["providers"][2].update(signing_secret=12345678))
    with pytest.raises(InvalidFile) as exc:
        reload_catalog(deps, write(tmp_path, "bad.json", doc))
    assert "12345678" not in one_line(exc)
    doc = _lines_with(lambda d: d["lines"][2].update(access_key=["SECRETKEY9"]))
    with pytest.raises(InvalidFile) as exc:
        reload_lines(deps, write(tmp_path, "bad.json", doc))
    assert "SECRETKEY9" not in one_line(exc)


# ---- secrets at rest ------------------------------------------------------------------------------

def test_access_keys_are_stored_only_as_scrypt_hashes(deps):
    # then no column of any table holds a clear access key
    values = text_values(deps)
    for key in ACCESS_KEYS.values():
        assert [(t, c) for t, c, v in values if key in v] == []
    # and each line's hash is scrypt and matches its key (and no other)
    from matomete_core.adapters.tables import lines
    with deps.engine.connect() as conn:
        stored = dict(conn.execute(select(lines.c.customer_id, lines.c.access_key_hash)).all())
    assert set(stored) == set(ACCESS_KEYS)
    for customer, digest in stored.items():
        assert digest.startswith("scrypt$")
        assert access_key_matches(ACCESS_KEYS[customer], digest)
        assert not access_key_matches(ACCESS_KEYS[customer] + "x", digest)
        assert not access_key_matches(ACCESS_KEYS[customer].lower(), digest)


def test_signing_secrets_never_appear_in_clear(deps, provider, tmp_path):
    # given a rotation under way, a decided purchase and a message quarantined for its signature
    doc = copy.deepcopy(CATALOG)
    doc["providers"][0]["previous_signing_secret"] = "old-secret-A-unit"
    reload_catalog(deps, write(tmp_path, "rotating.json", doc))
    provider.buy("user01", "pack", NOW)
    forged = provider.message("PB", NOW, order_id="forged", passport_id="user01", content_id="coin")
    forged["signature"] = "0" * 64
    assert provider.send("matomete.purchase", forged, now=NOW)["reason"] == "BAD_SIGNATURE"
    # then neither secret is in any column, and both are readable through the key
    values = text_values(deps)
    for secret in (*SECRETS.values(), "old-secret-A-unit"):
        assert [(t, c) for t, c, v in values if secret in v] == []
    from matomete_core.adapters.tables import providers
    with deps.engine.connect() as conn:
        sealed = conn.execute(select(providers.c.signing_secrets).where(providers.c.provider_id == "PA")).scalar_one()
    assert deps.secrets.open(sealed) == [SECRETS["PA"], "old-secret-A-unit"]


def test_no_clear_secret_is_in_the_database_file(deps, provider):
    # given decisions and a quarantined customer command carrying an access key
    provider.buy("user01", "pack", NOW)
    bus.handle(deps, "matomete.set_restriction", [over_the_wire({
        "message_id": "self-1", "occurred_at": NOW.isoformat(), "customer_id": "CAF0000012573",
        "access_key": ACCESS_KEYS["CAF0000012573"], "passport_id": "user01", "restricted": True})], {}, now=NOW)
    bus.handle(deps, "matomete.set_restriction", [over_the_wire({
        "message_id": "self-2", "occurred_at": NOW.isoformat(), "customer_id": "CAF0000000002", "unknown": 1,
        "access_key": ACCESS_KEYS["CAF0000000002"], "passport_id": None, "restricted": True})], {}, now=NOW)
    # when the database files are read as bytes
    deps.engine.dispose()
    db = Path(deps.engine.url.database)
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    # then no clear key or secret is anywhere in them
    for secret in (*ACCESS_KEYS.values(), *SECRETS.values()):
        assert secret.encode() not in raw, secret
    assert [(t, c) for t, c, v in text_values(deps) if any(k in v for k in ACCESS_KEYS.values())] == []


@pytest.mark.parametrize("loader, doc", [
    ("lines", {"lines": [{**LINES["lines"][1], "customer_id": "CAF00\nTraceback (most recent call last):"}]}),
    ("catalog", {"providers": [{**CATALOG["providers"][1], "provider_id": "PB\r\nP2"}]}),
])
def test_a_record_id_with_a_line_break_still_gives_one_line(deps, tmp_path, loader, doc):
    # given a record whose identifying field is not valid and holds a line break
    path = write(tmp_path, "newline.json", doc)
    before = snapshot(deps)
    # when
    with pytest.raises(InvalidFile) as exc:
        (reload_catalog if loader == "catalog" else reload_lines)(deps, path)
    # then the message is still one line (the CLI prints it as is)
    one_line(exc)
    assert snapshot(deps) == before
