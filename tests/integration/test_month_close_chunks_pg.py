"""SPEC.md "Month close": on PostgreSQL renewals and invoices run as parallel chunks, each its own
transaction. A close whose chunked step fails after one chunk committed resumes, on a rerun, to the
same invoices and charges, with no duplicate."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from matomete_core.adapters.tables import (
    billing_months,
    charges,
    invoice_items,
    invoices,
    line_billing,
    lines,
)
from matomete_core.service import close
from matomete_core.service.close import close_month
from matomete_core.service.invoices import stored_invoices
from matomete_core.service.verify import verify_month
from tests.unit.conftest import jst

pytestmark = pytest.mark.integration


class ChunkFailed(RuntimeError):
    pass


def count(engine, query) -> int:
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


@pytest.mark.parametrize("failing", [0, 1])
@pytest.mark.parametrize("step", ["renewals", "invoices"])
def test_a_chunked_step_that_fails_after_another_chunk_committed_resumes_with_no_duplicate(
        pg_deps, tmp_path, monkeypatch, step, failing):
    from tests.unit.conftest import Provider
    monkeypatch.setattr(close, "CHUNKS", 2)
    provider = Provider(pg_deps)
    # given six subscriptions on two billing accounts, whose keys hash to both chunks
    with pg_deps.engine.begin() as conn:
        conn.execute(update(lines).values(restricted=False))
        conn.execute(update(line_billing).where(line_billing.c.customer_id == "CAF0000000002")
                     .values(billing_account="03-0000-0004"))
    for passport_id, content in [("user01", "anime1"), ("user01", "pack"), ("user03", "anime2"), ("user03", "pack"),
                                 ("lineblk1", "anime1"), ("lineblk1", "pack")]:
        provider.buy(passport_id, content, jst("2026-07-10 10:00"))
    close_month(pg_deps.engine, "2026-07", now=jst("2026-08-01 03:00"), export_dir=tmp_path)

    def fail(chunk_step: str, index: int) -> None:
        if (chunk_step, index) == (step, failing):
            raise ChunkFailed(f"{step} chunk {index} failed before its commit")

    # when one chunk of the step fails while the other commits
    with pytest.raises(ChunkFailed):
        close_month(pg_deps.engine, "2026-08", now=jst("2026-09-01 03:00"), export_dir=tmp_path, chunk_hook=fail)
    august = charges.c.service_month == "2026-08"
    assert count(pg_deps.engine, select(billing_months.c.step).where(billing_months.c.month == "2026-08")) == \
        {"renewals": "closing", "invoices": "terms"}[step]
    if step == "renewals":
        assert 0 < count(pg_deps.engine, select(func.count()).where(august)) < 6
    else:  # the committed chunk made its account's items and invoice, the other neither
        assert 0 < count(pg_deps.engine, select(func.count()).where(invoice_items.c.month == "2026-08")) < 5
        assert count(pg_deps.engine, select(func.count()).where(invoices.c.month == "2026-08")) == 1
    # then a rerun finishes it: each subscription charged once, the invoices whole
    result = close_month(pg_deps.engine, "2026-08", now=jst("2026-09-01 04:00"), export_dir=tmp_path)
    assert (result["status"], result["charges"], result["invoices"], result["total"]) == ("closed", 6, 2, 2475)
    assert count(pg_deps.engine, select(func.count(charges.c.application_number.distinct())).where(august)) == 6
    assert {i["billing_account"]: (i["total"], [x["content_id"] for x in i["items"]])
            for i in stored_invoices(pg_deps.engine, "2026-08")} == {
        "03-0000-0004": (825, ["pack", "anime1"]), "06-1234-5678": (1650, ["pack", "anime1", "anime2"])}
    assert verify_month(pg_deps.engine, "2026-08")["ok"]
