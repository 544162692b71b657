"""Benchmark: the decision path next to Celery's own ceiling, on this machine's Redis and PostgreSQL.

    python ops/bench/decisions.py [--messages N | --quick] [--workers W] [--concurrency C]
                                  [--mode task|batch] [--size S] [--preload R] [--offered-rate P]

1. baseline: N no-op tasks (``matomete.noop``: same app, queue and settings), sent from a
   separate process with a bare Celery client, then drained by W ``matomete worker``; then N
   tasks that each commit one empty transaction (``matomete.probe_commit``), drained the same way:
   the ceiling of any design that commits each message on its own;
2. the real thing: N signed purchases for N/10 Passport IDs on N/20 lines, sent the same way, then
   decided by W ``matomete worker`` (``--mode task``, a task per message) or W ``matomete
   batch-worker`` (``--mode batch``, micro-batches of up to S), counted in the inbox; ``--concurrency
   C`` is each worker's pool processes, or batch processes (default for both: one per CPU);
   both rates are taken from the first result to the last of a queue filled beforehand, so neither
   the sender's speed nor the workers' start-up counts;
3. latency: purchases offered at half the measured decision rate (or ``--offered-rate P``) while the
   sender runs beside the workers; send-to-decision time from the sender's clock to the result's
   ``date_done``. The sender's Celery client builds every message beforehand (see ``send``), so
   that while the workers are timed it only pushes them onto the queue.

``--preload R`` first fills the tables with R decided purchases of an earlier month (charges, inbox,
outbox rows too), to show the cost of a decision as the tables grow.

Prints a table and a final JSON line: ``baseline_per_s, decisions_per_s, ratio, p50_ms, p95_ms,
p99_ms``, ``commit_per_s`` and ``commit_ratio`` (to the baseline), and ``sent_per_s``, the rate
the sender kept up during the latency run. On Linux it also says where the time goes:
``baseline_cpu_ms``, ``commit_cpu_ms`` and ``decision_cpu_ms``, the CPU a message cost over
each drain (user + system, from /proc) in the workers, PostgreSQL and Redis. A script, not a
test: compare ratios measured in one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Callable

SECRET = "bench-secret-PA"
QUEUE, STAGED = "provider-events", "bench-staged:"
PROBES = {"noop": "matomete.noop", "commit": "matomete.probe_commit"}  # workers.probe


# ---- the sender: a separate process, a bare Celery client, no project imports ----------------------

def _sign(message: dict) -> str:
    body = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def send(broker: str, kind: str, n: int, offset: int, rate: float, out: str, passports: int) -> None:
    """Send ``n`` messages, ``rate`` a second (0: at once). A bare Celery client builds and publishes
    each one first, to a staged copy of the queue (kombu's ``global_keyprefix``: byte for byte what
    it would have put on ``provider-events``); then, on schedule, each is moved onto
    ``provider-events`` with one LPUSH, and that is its send time. So the half a millisecond and more
    of CPU Celery takes to build a message is not spent beside the workers while they are timed."""
    import redis
    from celery import Celery

    client = Celery(broker=broker, backend=broker)
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                       broker_transport_options={"global_keyprefix": STAGED})
    at = (datetime.now(timezone(timedelta(hours=9))) - timedelta(seconds=30)).isoformat(timespec="seconds")
    with client.producer_or_acquire() as producer:
        for i in range(offset, offset + n):
            if kind in PROBES:
                args, name = [{"n": i}], PROBES[kind]
            else:
                msg = {"message_id": f"bench-{i}", "occurred_at": at, "provider_id": "PA", "order_id": f"o-{i}",
                       "passport_id": f"bench{i % passports + 1}", "content_id": "coin", "quantity": 1}
                msg["signature"] = _sign(msg)
                args, name = [msg], "matomete.purchase"
            # argsrepr: what the task's headers show of its arguments (Celery's default is a repr of
            # them all, signature included)
            client.send_task(name, args=args, queue=QUEUE, producer=producer, argsrepr=f"[{name} {i}]")
    r = redis.Redis.from_url(broker)
    raws = r.lrange(STAGED + QUEUE, 0, -1)[::-1]  # pushed on the left: the first sent is last
    r.delete(STAGED + QUEUE)
    ids = [json.loads(raw)["headers"]["id"] for raw in raws]
    sent: list[tuple[str, float]] = []
    started = time.perf_counter()
    for k in range(0, len(raws), 1 if rate else 1000):
        if rate:
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        part = raws[k:k + (1 if rate else 1000)]
        r.lpush(QUEUE, *part)  # in order: the first of them is popped first
        sent.extend((task_id, time.time()) for task_id in ids[k:k + len(part)])
    Path(out).write_text(json.dumps(sent))


# ---- the harness -------------------------------------------------------------------------------

def _sender(env: dict, kind: str, n: int, offset: int, rate: float, passports: int) -> list[tuple[str, float]]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    subprocess.run([sys.executable, __file__, "--send", kind, "--n", str(n), "--offset", str(offset),
                    "--rate", str(rate), "--out", out, "--passports", str(passports)], env=env, check=True)
    sent = json.loads(Path(out).read_text())
    os.unlink(out)
    return sent


def _done_times(redis_url: str, ids: list[str], timeout: float,
                on_first: Callable[[], None] = lambda: None) -> list[float]:
    """Wait until every task has a result; return each result's date_done (epoch seconds).
    ``on_first`` is called as the first result is seen."""
    import redis

    r = redis.Redis.from_url(redis_url)
    deadline = time.time() + timeout
    pending = list(ids)
    done: dict[str, float] = {}
    while pending and time.time() < deadline:
        # results come about in the order sent: ask only about the oldest few hundred still
        # pending, so that this poll takes little of the CPU that the workers measured need
        part, rest = pending[:500], pending[500:]
        still, first = [], not done
        for tid, raw in zip(part, r.mget([f"celery-task-meta-{t}" for t in part])):
            if raw is None:
                still.append(tid)
            else:
                meta = json.loads(raw)
                done[tid] = datetime.fromisoformat(meta["date_done"]).replace(tzinfo=timezone.utc).timestamp() \
                    if "+" not in meta["date_done"] else datetime.fromisoformat(meta["date_done"]).timestamp()
        if first and done:
            on_first()
        pending = still + rest
        if still:
            time.sleep(0.1)
    if pending:
        raise SystemExit(f"{len(pending)} of {len(ids)} tasks got no result in {timeout:.0f}s")
    return [done[t] for t in ids]


def _drain(env: dict, redis_url: str, kind: str, n: int, offset: int, passports: int, workers,  # noqa: ANN001
           servers: dict[str, list[int]]) -> tuple[float, dict[str, float]]:
    """Messages per second the workers drain, and the CPU milliseconds a message cost in the
    workers and in ``servers``: the queue is filled first (so the sender's own speed does not
    count), the workers are started, and both are taken from the first result to the last (so
    their start-up does not count either)."""
    sent = _sender(env, kind, n, offset, 0, passports)
    with workers as procs:
        def groups() -> dict[str, list[int]]:
            return {"workers": [p.pid for p in procs], **servers}

        at_first: dict[str, float] = {}
        finished = _done_times(redis_url, [t for t, _ in sent], timeout=max(120, n / 50),
                               on_first=lambda: at_first.update(_cpu_seconds(groups())))
        at_last = _cpu_seconds(groups())
    cpu = {k: round((at_last[k] - at_first[k]) / (n - 1) * 1000, 3) for k in at_last if k in at_first}
    return (n - 1) / (max(finished) - min(finished)), cpu


def _cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far (user + system, with those of exited children) by each group of
    process trees, read from /proc; {} where there is none (Linux only)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, float]] = {}  # pid: (parent, seconds)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile: its time is its parent's now
            continue
        fields = text[text.rindex(")") + 2:].split()  # from the state on (proc(5) field 3)
        procs[int(stat.parent.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in procs.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> float:
        return procs.get(pid, (0, 0.0))[1] + sum(tree(c) for c in children.get(pid, []))

    return {name: sum(tree(pid) for pid in roots) for name, roots in groups.items()} if procs else {}


def _servers(pg_url: str, redis_url: str) -> dict[str, list[int]]:
    """The process trees of the PostgreSQL (its postmaster) and the Redis the benchmark uses."""
    import psycopg
    import redis

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:  # not on this host, or no /proc
        postmaster = None
    servers = {"redis": [int(redis.Redis.from_url(redis_url).info("server")["process_id"])]}
    return {**servers, "postgres": [postmaster]} if postmaster else servers


def _preload(conn, rows: int, lines: int, passports: int) -> None:  # noqa: ANN001
    """``rows`` decided purchases of an earlier month, with their charges, inbox rows and published
    outbox rows: the tables as a service that has run for a while has them."""
    from sqlalchemy import text

    conn.execute(text(
        "INSERT INTO purchases (provider_id, order_id, passport_id, customer_id, content_id, price_type, unit_price,"
        " quantity, purchased_at, start_month, last_month) "
        "SELECT 'PA', 'pre-' || i, 'bench' || (i % :p + 1), 'CAF' || lpad(((i % :p) % :l + 1)::text, 10, '0'),"
        " 'coin', 'per_use', 10, 1, '2026-09-15T12:00:00+09', '2026-09', '2026-09' "
        "FROM generate_series(0, :n - 1) i"), {"n": rows, "p": passports, "l": lines})
    conn.execute(text(
        "INSERT INTO charges (application_number, customer_id, passport_id, provider_id, content_id, service_month,"
        " billing_month, quantity, amount, late) "
        "SELECT application_number, customer_id, passport_id, 'PA', 'coin', '2026-09', '2026-09', 1, 10, false "
        "FROM purchases"))
    conn.execute(text(
        "INSERT INTO inbox (sender, message_id, task, content_hash, order_id, decision, received_at) "
        "SELECT 'PA', 'pre-' || i, 'matomete.purchase', md5(i::text) || md5(i::text), 'pre-' || i,"
        " '{\"status\": \"accepted\"}', now() FROM generate_series(0, :n - 1) i"), {"n": rows})
    conn.execute(text(
        "INSERT INTO outbox (event_id, queue, body, created_at, published_at) "
        "SELECT 'pre-' || i, 'billing-records', '{}', now(), now() FROM generate_series(0, 2 * :n - 1) i"),
        {"n": rows})


def _setup(pg_url: str, n: int, env: dict, preload: int = 0) -> None:
    from sqlalchemy import text

    from matomete_core.adapters.database import make_engine
    from matomete_core.adapters.migrate import upgrade
    from matomete_core.config import Settings
    from matomete_core.security import SecretBox

    upgrade(pg_url)
    engine = make_engine(pg_url)
    box = SecretBox.from_settings(env["MATOMETE_SECRET_KEY"], "unused")
    lines, passports = max(1, n // 20), max(1, n // 10)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO providers (provider_id, name, signing_secrets, active) VALUES ('PA', 'A社', :s, true)"),
                     {"s": box.seal([SECRET])})
        conn.execute(text("INSERT INTO contents VALUES ('PA', 'coin', 'コイン', 'per_use', 10, NULL)"))
        conn.execute(text("INSERT INTO lines (customer_id, access_service, access_key_hash, line_limit) "
                          "SELECT 'CAF' || lpad(i::text, 10, '0'), 'hikari_next', 'bench', :limit "
                          "FROM generate_series(1, :l) i"), {"l": lines, "limit": Settings().max_line_limit})
        conn.execute(text("INSERT INTO line_billing (customer_id, from_month, billing_account) "
                          "SELECT 'CAF' || lpad(i::text, 10, '0'), '0000-00', '00' || lpad(i::text, 8, '0') "
                          "FROM generate_series(1, :l) i"), {"l": lines})
        conn.execute(text("INSERT INTO passport_ids (passport_id, customer_id, status) "
                          "SELECT 'bench' || i, 'CAF' || lpad(((i - 1) % :l + 1)::text, 10, '0'), 'registered' "
                          "FROM generate_series(1, :p) i"), {"p": passports, "l": lines})
        if preload:
            _preload(conn, preload, lines, passports)
    if preload:  # statistics of the filled tables; empty ones stay unanalyzed, as after `db upgrade`
        with engine.connect() as conn:  # (an ANALYZE of empty tables plans every lookup as a scan)
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()


@contextmanager
def scratch_database(pg_url: str, redis_url: str, prefix: str):  # noqa: ANN201
    """A new PostgreSQL database on ``pg_url``'s server and ``redis_url`` emptied, for one run:
    yields its URL and the environment (``MATOMETE_*``, a fresh secret key) of a deployment on
    them; the database is dropped afterwards."""
    import psycopg
    import redis
    from cryptography.fernet import Fernet

    redis.Redis.from_url(redis_url).flushdb()
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin_url = pg_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    db = f"{pg_url.rsplit('/', 1)[0]}/{name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATOMETE_")}
    env.update(MATOMETE_DATABASE_URL=db, MATOMETE_BROKER_URL=redis_url, MATOMETE_RESULT_BACKEND=redis_url,
               MATOMETE_SECRET_KEY=Fernet.generate_key().decode(), PYTHONUNBUFFERED="1")
    try:
        yield db, env
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def _workers(env: dict, logs: str, mode: str, count: int, concurrency: int | None, size: int):  # noqa: ANN202
    """``count`` worker processes: `matomete worker` (mode task) or `matomete batch-worker` (batch)."""
    procs = []
    try:
        for w in range(count):
            if mode == "batch":
                cmd = ["matomete", "batch-worker", "--loglevel=WARNING", f"--size={size}"]
                if concurrency:
                    cmd.append(f"--concurrency={concurrency}")
            else:
                cmd = ["matomete", "worker", "--loglevel=WARNING", f"--hostname=bench{w}@%h", "--without-heartbeat",
                       "--without-gossip", "--without-mingle"]
                if concurrency:
                    cmd.append(f"--concurrency={concurrency}")
            log = open(Path(logs) / f"{mode}-worker{w}.log", "w")
            procs.append(subprocess.Popen(cmd, env={**env, "MATOMETE_METRICS_PORT": "0"}, stdout=log,
                                          stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _count_decided(pg_url: str) -> tuple[int, int]:
    from sqlalchemy import text

    from matomete_core.adapters.database import make_engine

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        decided = conn.execute(text("SELECT count(*) FROM inbox WHERE message_id NOT LIKE 'pre-%'")).scalar_one()
        charged = conn.execute(text("SELECT count(*) FROM charges WHERE service_month <> '2026-09'")).scalar_one()
    engine.dispose()
    return decided, charged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--quick", action="store_true", help="2,000 messages")
    p.add_argument("--workers", type=int, default=1, help="worker processes (matomete worker)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="pool processes (--mode task) or batch processes (--mode batch) per worker")
    p.add_argument("--mode", choices=["task", "batch"], default="task",
                   help="decide with `matomete worker` (a task per message) or `matomete batch-worker`")
    p.add_argument("--size", type=int, default=500, help="batch size of `matomete batch-worker`")
    p.add_argument("--offered-rate", type=float, default=0,
                   help="offer this many purchases a second for the latency (default: half the measured rate)")
    p.add_argument("--preload", type=int, default=0,
                   help="decided purchases (with charges, inbox and outbox rows) in the tables beforehand")
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    p.add_argument("--send", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--passports", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.send:
        return send(os.environ["MATOMETE_BROKER_URL"], args.send, args.n, args.offset, args.rate, args.out,
                    args.passports)
    n = 2_000 if args.quick else args.messages
    passports = max(1, n // 10)

    logs = tempfile.mkdtemp(prefix="bench-decisions-")
    with scratch_database(args.pg_url, args.redis, "bench_decide") as (pg_url, env):
        _setup(pg_url, n, env, args.preload)
        servers = _servers(pg_url, args.redis)
        task_workers = partial(_workers, env, logs, "task", args.workers,
                               args.concurrency if args.mode == "task" else None, args.size)
        baseline, baseline_cpu = _drain(env, args.redis, "noop", n, 0, passports, task_workers(), servers)
        commit, commit_cpu = _drain(env, args.redis, "commit", n, 0, passports, task_workers(), servers)
        decisions, decision_cpu = _drain(env, args.redis, "purchase", n, 0, passports,
                                         _workers(env, logs, args.mode, args.workers, args.concurrency, args.size),
                                         servers)
        with _workers(env, logs, args.mode, args.workers, args.concurrency, args.size):
            offered = args.offered_rate or decisions / 2
            # two seconds at the offered rate first: the latency is that of workers in their stride
            # (connected, their statements prepared), not of their first batches
            warm = _sender(env, "purchase", max(20, int(offered * 2)), 10**8, offered, passports)
            _done_times(args.redis, [t for t, _ in warm], timeout=120)
            m = max(200, min(n // 2, int(offered * 20)))
            sent = _sender(env, "purchase", m, n, offered, passports)
            # the rate the sender kept up: its own CPU is this machine's, and it may fall short
            achieved = (m - 1) / max(1e-9, sent[-1][1] - sent[0][1])
            latencies = sorted((d - s) * 1000 for (_, s), d in zip(sent, _done_times(
                args.redis, [t for t, _ in sent], timeout=max(120, m / 20))))
        decided, charged = _count_decided(pg_url)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    report = {"messages": n, "preloaded": args.preload, "mode": args.mode, "workers": args.workers, "baseline_per_s": round(baseline), "decisions_per_s": round(decisions),
              "ratio": round(decisions / baseline, 3), "commit_per_s": round(commit),
              "commit_ratio": round(commit / baseline, 3), "offered_per_s": round(offered),
              "sent_per_s": round(achieved), "latency_messages": m,
              "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "mean_ms": round(statistics.mean(latencies), 1),
              "decided": decided, "charges": charged,
              "baseline_cpu_ms": baseline_cpu, "commit_cpu_ms": commit_cpu, "decision_cpu_ms": decision_cpu}
    print(f"{'':<34}{'per s':>10}", file=sys.stderr)
    print(f"{'no-op task (Celery ceiling)':<34}{report['baseline_per_s']:>10}", file=sys.stderr)
    print(f"{'a task committing once':<34}{report['commit_per_s']:>10}", file=sys.stderr)
    print(f"{'purchase decisions':<34}{report['decisions_per_s']:>10}", file=sys.stderr)
    if baseline_cpu and decision_cpu:
        print(f"CPU ms a message{'':<18}" + "".join(f"{k:>10}" for k in decision_cpu) + f"{'total':>10}",
              file=sys.stderr)
        for label, cpu in (("no-op task", baseline_cpu), ("a task committing once", commit_cpu),
                           ("purchase decision", decision_cpu)):
            print(f"{label:<34}" + "".join(f"{cpu.get(k, 0):>10.3f}" for k in decision_cpu)
                  + f"{sum(cpu.values()):>10.3f}", file=sys.stderr)
    if achieved < 0.9 * offered:
        print(f"the sender kept up {round(achieved)}/s of the {round(offered)}/s offered: on this machine its "
              "own CPU competes with the workers', and the latency is that of a saturated machine",
              file=sys.stderr)
    print(f"ratio {report['ratio']} (a task committing once: {report['commit_ratio']}); "
          f"latency at {report['offered_per_s']}/s (sent at {report['sent_per_s']}/s): "
          f"p50 {report['p50_ms']} ms, "
          f"p95 {report['p95_ms']} ms, p99 {report['p99_ms']} ms; decided {decided} (expected {n + m + len(warm)}), "
          f"charges {charged}; worker logs in {logs}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
