"""SPEC.md "Views": the line's overall status (利用中, 登録中, 未利用, 規制中), in ``passport show``
and in ``matomete line show``, with the line's IDs, limits, usage and this month's billing account."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, update

from matomete_core.adapters.tables import lines, passport_ids
from matomete_core.cli import cli
from matomete_core.errors import NotFound
from matomete_core.service.line_view import line_details, line_status
from matomete_core.service.views import passport_details
from tests.unit.conftest import jst
from tests.unit.senders import LINE, Customer, OrderSystem

AT = jst("2026-08-20 12:00")


@pytest.mark.parametrize("restricted, statuses, expected", [
    (False, ["registered", "registering"], "利用中"),
    (False, ["registering"], "登録中"),
    (False, [], "未利用"),
    (True, ["registered"], "規制中"),
    (True, [], "規制中"),
], ids=["in-use", "registering", "unused", "restricted", "restricted-without-ids"])
def test_the_lines_overall_status(restricted, statuses, expected):
    assert line_status(restricted=restricted, id_statuses=statuses) == expected


def test_passport_details_carry_the_lines_overall_status(deps):
    assert passport_details(deps.engine, "user01", now=AT)["line_status"] == "利用中"
    assert passport_details(deps.engine, "lineblk1", now=AT)["line_status"] == "規制中"


def test_a_line_whose_ids_are_all_registering_is_registering(deps):
    with deps.engine.begin() as conn:
        conn.execute(delete(passport_ids).where(passport_ids.c.customer_id == LINE,
                                                passport_ids.c.status == "registered"))
    assert line_details(deps.engine, LINE, now=AT)["status"] == "登録中"


def test_a_terminated_line_has_no_id_left(deps):
    OrderSystem(deps).change("line_cancellation", jst("2026-08-10 12:00"))
    doc = line_details(deps.engine, LINE, now=AT)
    assert doc["status"] == "未利用"
    assert {p["status"] for p in doc["passport_ids"]} == {"deleted"}
    assert doc["terminated_at"] is not None


def test_line_details_show_each_id_and_the_line_with_this_months_usage(deps, provider):
    provider.buy("user01", "anime1", jst("2026-08-10 12:00"))
    provider.buy("user02", "coin", jst("2026-08-11 12:00"), quantity=2)
    Customer(deps).restrict("user03", jst("2026-08-12 12:00"))

    doc = line_details(deps.engine, LINE, now=AT)

    assert {k: v for k, v in doc.items() if k != "passport_ids"} == {
        "customer_id": LINE, "status": "利用中", "access_service": "hikari_next", "restricted": False,
        "line_limit": 10000, "month": "2026-08", "usage": 500, "billing_account": "06-1234-5678",
        "omatome_representative": None, "terminated_at": None}
    ids = {p["passport_id"]: p for p in doc["passport_ids"]}
    assert sorted(ids) == ["blocked1", "newbie01", "user01", "user02", "user03"]
    assert {k: ids["user01"][k] for k in ("status", "restricted", "limit", "usage")} == {
        "status": "registered", "restricted": False, "limit": None, "usage": 300}
    assert (ids["user02"]["limit"], ids["user02"]["usage"]) == (1000, 200)
    assert ids["user03"]["restricted"] is True
    assert ids["newbie01"]["status"] == "registering"
    assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc


def test_line_details_show_the_billing_account_of_the_month_of_now(deps):
    OrderSystem(deps).change("number_change", jst("2026-09-01 00:00"), new_billing_account="06-9999-0000")
    assert line_details(deps.engine, LINE, now=AT)["billing_account"] == "06-1234-5678"
    assert line_details(deps.engine, LINE, now=jst("2026-09-02 00:00"))["billing_account"] == "06-9999-0000"


def test_line_details_of_an_unknown_customer_are_not_found(deps):
    with pytest.raises(NotFound):
        line_details(deps.engine, "CAF0000000404", now=AT)


def test_a_restricted_line_shows_restricted(deps):
    with deps.engine.begin() as conn:
        conn.execute(update(lines).where(lines.c.customer_id == LINE).values(restricted=True))
    assert line_details(deps.engine, LINE, now=AT)["status"] == "規制中"


# ---- the command line --------------------------------------------------------------------------

def run(deps, *args: str):
    env = {"MATOMETE_DATABASE_URL": str(deps.engine.url), "MATOMETE_KEY_FILE": deps.settings.key_file,
           "MATOMETE_SECRET_KEY": None}
    return CliRunner().invoke(cli, list(args), env=env)


def test_line_show_json_prints_the_line(deps):
    result = run(deps, "line", "show", LINE, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["customer_id"], doc["status"], doc["line_limit"]) == (LINE, "利用中", 10000)
    assert len(doc["passport_ids"]) == 5


def test_line_show_prints_tables(deps):
    result = run(deps, "line", "show", LINE)
    assert result.exit_code == 0, result.output
    assert "利用中" in result.output and "user01" in result.output


def test_line_show_of_an_unknown_customer_exits_1_with_one_line(deps):
    result = run(deps, "line", "show", "CAF0000000404", "--json")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["matomete: unknown customer ID CAF0000000404"]


def test_passport_show_json_carries_the_line_status(deps):
    result = run(deps, "passport", "show", "user01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["line_status"] == "利用中"
