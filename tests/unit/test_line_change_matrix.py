"""SPEC.md "Line changes": the matrix, one test per cell — a change that continues lets the line's
IDs buy on; one that terminates ends the line (its IDs then buy nothing: LINE_TERMINATED)."""

from __future__ import annotations

from typing import get_args

import pytest
from sqlalchemy import select

from matomete_core.adapters.tables import lines
from matomete_core.messages import BILLING_NUMBER_CHANGES, LineChangeKind
from matomete_core.rules.line_change import MATRIX, effect
from tests.unit.conftest import jst
from tests.unit.senders import LINE, OrderSystem

AT = jst("2026-08-10 12:00")
KEPT, CHANGED = False, True

CELLS = [
    # change                 customer ID changed   effect
    ("relocation",           KEPT,                 "continue"),
    ("relocation",           CHANGED,              "terminate"),
    ("item_change",          KEPT,                 "continue"),
    ("item_change",          CHANGED,              "terminate"),
    ("menu_change",          KEPT,                 "terminate"),
    ("menu_change",          CHANGED,              "terminate"),
    ("line_cancellation",    KEPT,                 "terminate"),
    ("line_cancellation",    CHANGED,              "terminate"),
    ("succession",           KEPT,                 "terminate"),
    ("succession",           CHANGED,              "terminate"),
    ("rename",               KEPT,                 "continue"),
    ("rename",               CHANGED,              "continue"),
    ("move_to_east",         KEPT,                 "terminate"),
    ("move_to_east",         CHANGED,              "terminate"),
    ("number_change",        KEPT,                 "continue"),
    ("number_change",        CHANGED,              "continue"),
    ("billing_phone_change", KEPT,                 "continue"),
    ("billing_phone_change", CHANGED,              "continue"),
    ("individual_billing",   KEPT,                 "continue"),
    ("individual_billing",   CHANGED,              "continue"),
    ("wide_area_billing",    KEPT,                 "continue"),
    ("wide_area_billing",    CHANGED,              "continue"),
]
IDS = [f"{change}-{'changed' if changed else 'kept'}-{result}" for change, changed, result in CELLS]
NEW_ACCOUNT = {"number_change": "06-1234-0000", "billing_phone_change": "06-4321-0000",
               "individual_billing": "0098765432", "wide_area_billing": "03-0000-1111"}


def test_the_matrix_has_a_row_for_every_change_the_contract_names():
    assert set(MATRIX) == set(get_args(LineChangeKind))
    assert {(c, changed) for c, changed, _ in CELLS} == {(c, x) for c in MATRIX for x in (KEPT, CHANGED)}


@pytest.mark.parametrize("change, customer_id_changed, expected", CELLS, ids=IDS)
def test_the_rule_gives_the_matrix_cell(change, customer_id_changed, expected):
    assert effect(change, customer_id_changed) == expected


@pytest.mark.parametrize("change, customer_id_changed, expected", CELLS, ids=IDS)
def test_a_line_change_continues_or_terminates_the_line_as_its_cell_says(deps, provider, change,
                                                                         customer_id_changed, expected):
    # given a line whose ID user01 buys
    orders = OrderSystem(deps)
    fields = {"new_billing_account": NEW_ACCOUNT[change]} if change in BILLING_NUMBER_CHANGES else {}
    # when the order system tells of the change
    decision = orders.change(change, AT, customer_id_changed=customer_id_changed, **fields)
    # then it is accepted, and the line goes on or ends
    assert (decision["status"], decision["reason"]) == ("accepted", None)
    later = provider.buy("user01", "coin", jst("2026-08-10 12:30"))
    with deps.engine.connect() as conn:
        terminated_at = conn.execute(select(lines.c.terminated_at).where(lines.c.customer_id == LINE)).scalar()
    if expected == "continue":
        assert (terminated_at, later["status"]) == (None, "accepted")
    else:
        assert (terminated_at, later["reason"]) == (AT, "LINE_TERMINATED")
