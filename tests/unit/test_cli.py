"""The ``matomete`` command line (CONTRACT.md "Command line"), driven through click's CliRunner on a
SQLite file and a key file of its own. Bad input: exit non-zero, one line on stderr, no traceback."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from matomete_core.cli import cli as main
from matomete_core.config import Settings
from matomete_core.service import bus
from matomete_core.service.deps import bootstrap
from matomete_core.testing import over_the_wire, signed
from tests.unit.conftest import CATALOG, LINES, SECRETS, jst

LINE = "CAF0000012573"


class Cli:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.db = tmp_path / "cli.db"
        self.key = tmp_path / "keys" / "cli.key"
        self.env = {
            "MATOMETE_DATABASE_URL": f"sqlite:///{self.db}", "MATOMETE_KEY_FILE": str(self.key),
            "MATOMETE_SECRET_KEY": None, "MATOMETE_EXPORT_DIR": str(tmp_path / "exports"),
            "MATOMETE_DEFAULT_LINE_LIMIT": None, "MATOMETE_MAX_LINE_LIMIT": None,
        }

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=self.env)

    def file(self, name: str, doc: object) -> str:
        path = self.tmp / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        return str(path)

    def settings(self) -> Settings:
        return Settings(database_url=f"sqlite:///{self.db}", key_file=str(self.key))


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def loaded(cli: Cli) -> Cli:
    for args in (("db", "upgrade"), ("catalog", "load", cli.file("catalog.json", CATALOG)),
                 ("lines", "load", cli.file("lines.json", LINES))):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    return cli


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


def fails_with_one_line(result: Result, code: int = 1) -> str:
    """Exit ``code``, nothing on stdout, exactly one line on stderr, no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    return lines[0]


def rows_in(cli: Cli, table: str) -> int:
    from sqlalchemy import func, select

    from matomete_core.adapters import tables
    from matomete_core.adapters.database import make_engine

    engine = make_engine(f"sqlite:///{cli.db}")
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(getattr(tables, table))).scalar_one()
    finally:
        engine.dispose()


def as_json(result: Result) -> dict:
    return json.loads(ok(result))


# ---- set-up commands ----------------------------------------------------------------------------

def test_db_upgrade_prints_a_summary_and_can_run_again(cli):
    first = ok(cli("db", "upgrade"))
    assert first.strip() and len(first.splitlines()) == 1
    assert cli.db.exists()
    assert ok(cli("db", "upgrade")) == first


def test_catalog_and_lines_load_print_a_summary(cli):
    ok(cli("db", "upgrade"))
    assert ok(cli("catalog", "load", cli.file("catalog.json", CATALOG))) == "loaded 2 providers, 5 contents\n"
    assert ok(cli("lines", "load", cli.file("lines.json", LINES))) == "loaded 3 lines, 7 Passport IDs\n"
    # loading again is an upsert: the same summary
    assert ok(cli("catalog", "load", cli.file("catalog.json", CATALOG))) == "loaded 2 providers, 5 contents\n"
    assert ok(cli("lines", "load", cli.file("lines.json", LINES))) == "loaded 3 lines, 7 Passport IDs\n"


def test_the_key_file_the_cli_makes_is_owner_only(loaded):
    assert stat.S_IMODE(os.stat(loaded.key).st_mode) == 0o600


def _bad_lines() -> dict:
    doc = copy.deepcopy(LINES)
    del doc["lines"][1]["billing_account"]
    return doc


def _bad_catalog() -> dict:
    doc = copy.deepcopy(CATALOG)
    doc["providers"][1]["contents"][0]["unit_price"] = "300"
    return doc


@pytest.mark.parametrize("command, doc, names", [
    ("lines", _bad_lines(), ["CAF0000000002", "billing_account"]),
    ("lines", {"lines": [{**LINES["lines"][0], "line_limit": 50_001}]}, [LINE, "line_limit"]),
    ("lines", "{\"lines\": [", ["not a JSON document"]),
    ("catalog", _bad_catalog(), ["PB", "unit_price"]),
    ("catalog", "not json at all", ["not a JSON document"]),
])
def test_a_bad_file_exits_1_with_one_line_and_loads_nothing(cli, command, doc, names):
    # given an upgraded, empty database
    ok(cli("db", "upgrade"))
    # when
    line = fails_with_one_line(cli(command, "load", cli.file("bad.json", doc)))
    # then
    assert line.startswith("matomete: ")
    for name in names:
        assert name in line
    assert rows_in(cli, "providers") == rows_in(cli, "contents") == rows_in(cli, "lines") == 0


@pytest.mark.parametrize("command", ["catalog", "lines"])
def test_a_missing_file_exits_1_with_one_line(cli, command):
    ok(cli("db", "upgrade"))
    line = fails_with_one_line(cli(command, "load", str(cli.tmp / "nowhere.json")))
    assert "nowhere.json" in line and "no such file" in line


def test_loading_before_the_schema_exists_exits_1_with_one_line(cli):
    line = fails_with_one_line(cli("lines", "load", cli.file("lines.json", LINES)))
    assert line.startswith("matomete: ")


# ---- views ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("month", ["2026-13", "2026-00", "2026-8", "202608", "2026-08-01", "next"])
def test_a_statement_for_a_month_that_is_not_yyyy_mm_exits_non_zero(loaded, month):
    result = loaded("statement", LINE, month)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and result.stdout == ""
    assert month in result.stderr


def test_a_statement_page_below_1_exits_non_zero(loaded):
    result = loaded("statement", LINE, "2026-08", "--page", "0")
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_statement_of_an_unknown_customer_exits_1_with_one_line(loaded):
    assert "CAF0000000404" in fails_with_one_line(loaded("statement", "CAF0000000404", "2026-08", "--json"))


def test_the_statement_json_shows_what_was_bought(loaded):
    # given a purchase decided on the CLI's database
    deps = bootstrap(loaded.settings())
    at = jst("2026-08-10 12:00")
    message = signed({"message_id": "cli-1", "occurred_at": at.isoformat(), "provider_id": "PB",
                      "order_id": "o-cli-1", "passport_id": "user01", "content_id": "anime1"}, SECRETS["PB"])
    decision = bus.handle(deps, "matomete.purchase", [over_the_wire(message)], {}, now=at)
    deps.engine.dispose()
    assert decision["status"] == "accepted"
    # when
    doc = as_json(loaded("statement", LINE, "2026-08", "--passport-id", "user01", "--json"))
    # then
    assert set(doc) == {"customer_id", "month", "passport_id", "page", "pages", "total_count", "total_amount",
                        "rows"}
    assert (doc["customer_id"], doc["month"], doc["passport_id"], doc["total_amount"]) == (
        LINE, "2026-08", "user01", 300)
    assert [(r["application_number"], r["content_name"], r["start_date"], r["end_date"]) for r in doc["rows"]] == [
        (decision["application_number"], "名作アニメ1", "2026-08-10", None)]
    # and the table form works too
    table = ok(loaded("statement", LINE, "2026-08"))
    assert decision["application_number"] in table


def test_passport_show_of_an_unknown_id_exits_1_with_one_line(loaded):
    line = fails_with_one_line(loaded("passport", "show", "unknown", "--json"))
    assert line.startswith("matomete: ") and "unknown" in line


def test_passport_show_json_has_the_contract_keys(loaded):
    doc = as_json(loaded("passport", "show", "user02", "--json"))
    assert set(doc) == {"passport_id", "customer_id", "status", "restricted", "limit", "line_limit", "month",
                        "usage", "registered_at", "line_status"}  # line_status: beyond CONTRACT.md
    assert (doc["passport_id"], doc["customer_id"], doc["limit"], doc["line_limit"], doc["usage"]) == (
        "user02", LINE, 1000, 10000, 0)
    assert re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", doc["month"])  # the CLI's now, in JST


def test_inquiries_json_of_a_line_that_bought_nothing(loaded):
    assert as_json(loaded("inquiries", LINE, "--json")) == {"customer_id": LINE, "providers": []}


def test_inquiries_of_an_unknown_customer_exit_1_with_one_line(loaded):
    fails_with_one_line(loaded("inquiries", "CAF0000000404", "--json"))


def test_quarantine_list_is_empty_on_an_empty_database(cli):
    ok(cli("db", "upgrade"))
    assert as_json(cli("quarantine", "list", "--json")) == {"messages": []}


def test_quarantine_list_shows_a_message_redacted(loaded):
    # given a purchase with a forged signature
    deps = bootstrap(loaded.settings())
    at = jst("2026-08-10 12:00")
    forged = {"message_id": "cli-f", "occurred_at": at.isoformat(), "provider_id": "PB", "order_id": "o-f",
              "passport_id": "user01", "content_id": "anime1", "signature": "ab" * 32}
    assert bus.handle(deps, "matomete.purchase", [forged], {}, now=at)["reason"] == "BAD_SIGNATURE"
    deps.engine.dispose()
    # when
    doc = as_json(loaded("quarantine", "list", "--json"))
    # then
    (entry,) = doc["messages"]
    assert set(entry) == {"id", "task", "reason", "detail", "received_at", "message"}
    assert (entry["task"], entry["reason"]) == ("matomete.purchase", "BAD_SIGNATURE")
    assert entry["message"]["signature"] == "***" and entry["message"]["order_id"] == "o-f"
    assert "ab" * 32 not in json.dumps(doc)


def test_a_usage_error_is_one_line_on_stderr_from_the_installed_command(tmp_path):
    import subprocess
    import sys
    env = {"PATH": "/usr/bin:/bin", "MATOMETE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "MATOMETE_KEY_FILE": str(tmp_path / "k")}
    done = subprocess.run([sys.executable, "-c", "from matomete_core.cli import main; main()",
                           "statement", "CAF0000012573", "2026-13"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "2026-13" in done.stderr
