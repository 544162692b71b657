"""Benchmark: month close over N subscriptions on N×0.3 lines, on this machine's PostgreSQL.

    python ops/bench/month_close.py [--subscriptions N] [--pg-url URL] [--keep]

Generates the data with set-based SQL in a fresh database, closes a month with the real
``close_month``, and measures in the same run the baseline: a plain ``INSERT … SELECT`` of the
same row count into a table with the same keys. Prints a table and a final JSON line:
``subscriptions, seconds, subscriptions_per_s, raw_per_s, ratio, peak_rss_mb, steps``.
A script, not a test: figures vary with the machine; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import sys
import tempfile
import time
from datetime import datetime, timezone

import psycopg
from sqlalchemy import text

from matomete_core.adapters.database import make_engine
from matomete_core.adapters.migrate import upgrade
from matomete_core.service.close import close_month

MONTH, START = "2026-10", "2026-09"
CONTENTS = 4


def _admin(url: str):  # noqa: ANN202
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def generate(engine, n: int) -> None:  # noqa: ANN001
    lines = max(1, int(n * 0.3))
    passports = lines  # one Passport ID a line; four contents → up to 4 subscriptions an ID
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO providers (provider_id, name, signing_secrets, active) "
                          "VALUES ('PA', 'A社', 'x', true)"))
        conn.execute(text("INSERT INTO contents (provider_id, content_id, name, price_type, unit_price) "
                          "SELECT 'PA', 'c' || i, 'content ' || i, 'monthly_flat', 100 * (i + 1) "
                          "FROM generate_series(0, :k - 1) i"), {"k": CONTENTS})
        conn.execute(text("INSERT INTO lines (customer_id, access_service, access_key_hash, line_limit) "
                          "SELECT 'CAF' || lpad(i::text, 10, '0'), 'hikari_next', 'bench', 10000 "
                          "FROM generate_series(1, :l) i"), {"l": lines})
        conn.execute(text("INSERT INTO line_billing (customer_id, from_month, billing_account) "
                          "SELECT 'CAF' || lpad(i::text, 10, '0'), '0000-00', '00' || lpad(i::text, 8, '0') "
                          "FROM generate_series(1, :l) i"), {"l": lines})
        conn.execute(text("INSERT INTO passport_ids (passport_id, customer_id, status) "
                          "SELECT 'bench' || i, 'CAF' || lpad(i::text, 10, '0'), 'registered' "
                          "FROM generate_series(1, :p) i"), {"p": passports})
        conn.execute(text(
            "INSERT INTO purchases (provider_id, order_id, passport_id, customer_id, content_id, price_type,"
            " unit_price, quantity, purchased_at, start_month, dedupe_key) "
            "SELECT 'PA', 'o' || i, 'bench' || (i % :p + 1), 'CAF' || lpad((i % :p + 1)::text, 10, '0'),"
            " 'c' || (i / :p), 'monthly_flat', 100 * (i / :p + 1), 1, '2026-09-15T12:00:00+09', :start,"
            " 'bench' || (i % :p + 1) || '|PA|c' || (i / :p) "
            "FROM generate_series(0, :n - 1) i"), {"p": passports, "n": n, "start": START})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))


def raw_baseline(engine, n: int) -> float:  # noqa: ANN001
    """A plain INSERT … SELECT of the same rows into a table with the charges table's keys: its
    primary key, unique keys, indexes and foreign key."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE raw_charges (LIKE charges INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                          "INCLUDING INDEXES)"))
        conn.execute(text("ALTER TABLE raw_charges ADD FOREIGN KEY (application_number) "
                          "REFERENCES purchases (application_number)"))
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO raw_charges (application_number, customer_id, passport_id, provider_id, content_id,"
            " service_month, billing_month, quantity, amount, late, dedupe_key) "
            "SELECT application_number, customer_id, passport_id, provider_id, content_id, :m, :m, quantity,"
            " unit_price * quantity, false, dedupe_key FROM purchases"), {"m": MONTH})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    args = parser.parse_args()
    n = args.subscriptions
    name = f"bench_close_{secrets.token_hex(4)}"
    base = args.pg_url.rsplit("/", 1)[0]
    with _admin(args.pg_url) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"{base}/{name}"
    try:
        upgrade(url)
        engine = make_engine(url)
        t0 = time.perf_counter()
        generate(engine, n)
        print(f"generated {n:,} subscriptions on {int(n * 0.3):,} lines in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        raw_s = raw_baseline(engine, n)
        steps: dict[str, float] = {}
        marks = [time.perf_counter()]

        def on_step(step: str, _done: int, _total: int) -> None:
            marks.append(time.perf_counter())
            steps[step] = 0.0

        started = time.perf_counter()
        last = [started]

        def after(step: str) -> None:
            now_ = time.perf_counter()
            steps[step] = round(now_ - last[0], 3)
            last[0] = now_

        with tempfile.TemporaryDirectory() as exports:
            result = close_month(engine, MONTH, now=datetime(2026, 11, 1, 0, 0, tzinfo=timezone.utc),
                                 export_dir=exports, after_step=after)
        seconds = time.perf_counter() - started
        engine.dispose()
    finally:
        if not args.keep:
            with _admin(args.pg_url) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"subscriptions": n, "seconds": round(seconds, 2), "subscriptions_per_s": round(n / seconds),
              "raw_per_s": round(n / raw_s), "ratio": round((n / seconds) / (n / raw_s), 3),
              "peak_rss_mb": round(peak_mb, 1), "invoices": result["invoices"], "steps": steps}
    print(f"{'step':<12}{'seconds':>10}", file=sys.stderr)
    for step, secs in steps.items():
        print(f"{step:<12}{secs:>10.3f}", file=sys.stderr)
    print(f"raw INSERT … SELECT: {raw_s:.2f}s; close: {seconds:.2f}s", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
