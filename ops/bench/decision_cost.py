"""Benchmark: what one decision costs, in this process, without Celery around it.

    python ops/bench/decision_cost.py [--messages N] [--rounds R]

The end-to-end benchmark (decisions.py) measures throughput through Celery; on a shared two-core
machine its runs vary by ±15%, more than a change to the decision itself may be worth. This one
calls the bus as a pool process does (``bus.handle``), one purchase after another, against this
machine's PostgreSQL and Redis, and measures the CPU each decision costs — this process's (every
thread) and PostgreSQL's — and its wall time. Three ways of publishing the outbound messages are
interleaved, R rounds of N purchases each, in one database:

* ``inline``: published and marked right after each commit (``publish_written``), as the pool
  processes did before the courier;
* ``courier``: handed to a courier (workers.outbound), as the pool processes do now; it is closed
  at the end of each round, inside the measurement, so all its work is counted;
* ``none``: not published (the floor; the rows stay for the relay).

Prints a table and a final JSON line of ms per decision per way, and each way's ratio to
``inline`` measured in the same run. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from decisions import _cpu_seconds, _servers, _setup, _sign, scratch_database  # noqa: E402

WAYS = ("inline", "courier", "none")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000, help="purchases per way per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = p.parse_args()

    total = args.messages * args.rounds * len(WAYS)
    with scratch_database(args.pg_url, args.redis, "bench_cost") as (pg_url, env):
        os.environ.update({k: v for k, v in env.items() if k.startswith("MATOMETE_")})
        _setup(pg_url, total, env)
        cost = _measure(pg_url, args.redis, args.messages, args.rounds, passports=max(1, total // 10))

    report = {way: {k: round(v, 3) for k, v in c.items()} for way, c in cost.items()}
    for way in WAYS:
        report[way]["ratio_cpu_to_inline"] = round(
            (cost[way]["process_cpu_ms"] + cost[way]["postgres_cpu_ms"])
            / (cost["inline"]["process_cpu_ms"] + cost["inline"]["postgres_cpu_ms"]), 3)
    print(f"{'ms a decision':<16}{'process CPU':>14}{'PostgreSQL CPU':>16}{'wall':>10}{'CPU vs inline':>15}",
          file=sys.stderr)
    for way in WAYS:
        r = report[way]
        print(f"{way:<16}{r['process_cpu_ms']:>14.3f}{r['postgres_cpu_ms']:>16.3f}{r['wall_ms']:>10.3f}"
              f"{r['ratio_cpu_to_inline']:>15.3f}", file=sys.stderr)
    print(json.dumps({"messages": args.messages, "rounds": args.rounds, **report}))


def _measure(pg_url: str, redis_url: str, n: int, rounds: int, passports: int) -> dict[str, dict[str, float]]:
    from matomete_core.adapters.relay import publish_written
    from matomete_core.service import bus
    from workers import tasks
    from workers.outbound import Courier

    d = tasks.deps()
    servers = {"postgres": _servers(pg_url, redis_url)["postgres"]}
    at = (datetime.now(timezone(timedelta(hours=9))) - timedelta(seconds=30)).isoformat(timespec="seconds")
    sequence = iter(range(10**9))

    def purchase() -> dict:
        i = next(sequence)
        m = {"message_id": f"cost-{i}", "occurred_at": at, "provider_id": "PA", "order_id": f"o-{i}",
             "passport_id": f"bench{i % passports + 1}", "content_id": "coin", "quantity": 1}
        return json.loads(json.dumps({**m, "signature": _sign(m)}))  # as the broker hands it over

    def inline(rows: list) -> None:
        publish_written(d.engine, d.publisher, rows, now=datetime.now(timezone.utc))

    def run(way: str, count: int) -> tuple[float, float, float]:
        courier = Courier(partial(tasks.publish_quietly, d)) if way == "courier" else None
        on_commit = {"inline": inline, "courier": courier and courier.put, "none": None}[way]
        bodies = [purchase() for _ in range(count)]
        pg0, cpu0, wall0 = _cpu_seconds(servers).get("postgres", 0.0), time.process_time(), time.perf_counter()
        for body in bodies:
            decision = bus.handle(d, "matomete.purchase", (body,), {}, now=datetime.now(timezone.utc),
                                  on_commit=on_commit)
            assert decision["status"] == "accepted", decision
        if courier is not None:
            courier.close(timeout=60)
        return (time.process_time() - cpu0, _cpu_seconds(servers).get("postgres", 0.0) - pg0,
                time.perf_counter() - wall0)

    for way in WAYS:  # connections made, statements prepared, the courier's thread known
        run(way, 100)
    sums = {way: [0.0, 0.0, 0.0] for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            for k, v in enumerate(run(way, n)):
                sums[way][k] += v
    decided = n * rounds
    return {way: {"process_cpu_ms": s[0] * 1000 / decided, "postgres_cpu_ms": s[1] * 1000 / decided,
                  "wall_ms": s[2] * 1000 / decided} for way, s in sums.items()}


if __name__ == "__main__":
    main()
