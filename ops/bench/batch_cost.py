"""Benchmark: what a decision in a micro-batch costs, in one process, without the drain around it.

    python ops/bench/batch_cost.py [--messages N] [--size S] [--rounds R] [--against CHECKOUT]

The end-to-end benchmark (decisions.py) varies by ±15% and more between runs on a shared two-core
machine, more than most changes to the batch path are worth. This one fills ``provider-events``
with N signed purchases (as decisions.py sends them), then runs the batch worker's own loop
(workers.batch.BatchWorker: take, decide, store the results, acknowledge, publish) in this process
until the queue is empty, batches of up to S, against this machine's PostgreSQL and Redis. It
measures per decision this process's CPU, PostgreSQL's and Redis', and the wall time; the first
tenth of the batches warms up and is not counted.

``--against CHECKOUT`` runs each round twice, alternately, with this checkout's code and with
CHECKOUT's (another clone or ``git worktree`` of the project): each run in a subprocess with that
checkout first on the path. It prints both and the ratio of this checkout's CPU to CHECKOUT's,
round by round — measured in the same minutes, so the machine's mood moves both alike.

Prints a table and a final JSON line. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from decisions import _cpu_seconds, _sender, _servers, _setup, scratch_database  # noqa: E402

HERE = Path(__file__).resolve().parents[2]


def one_round(pg_url: str, redis_url: str, n: int, size: int) -> dict[str, float]:
    """Decide ``n`` purchases in batches of up to ``size`` in this process; CPU and wall ms a decision."""
    with scratch_database(pg_url, redis_url, "bench_batch") as (db, env):
        _setup(db, n, env)
        _sender(env, "purchase", n, 0, 0, max(1, n // 10))
        os.environ.update({k: v for k, v in env.items() if k.startswith("MATOMETE_")})
        from workers.batch import BatchWorker

        worker = BatchWorker(size=size)
        try:  # as BatchWorker.run does before its loop (a checkout from before session 20 does not)
            from workers.collector import settle
        except ImportError:
            pass
        else:
            settle()
        warm = 0
        while warm < n // 10 and (taken := worker.take()):
            worker.process(taken)
            warm += len(taken)
        servers = _servers(db, redis_url)
        cpu0, servers0, wall0, decided = time.process_time(), _cpu_seconds(servers), time.perf_counter(), 0
        while taken := worker.take():
            worker.process(taken)
            decided += len(taken)
        cpu1, servers1, wall1 = time.process_time(), _cpu_seconds(servers), time.perf_counter()
        worker._kombu.release()
    per = 1000 / max(1, decided)
    return {"decided": decided, "process": round((cpu1 - cpu0) * per, 4),
            **{k: round((servers1[k] - servers0[k]) * per, 4) for k in servers1 if k in servers0},
            "wall": round((wall1 - wall0) * per, 4)}


def _in(checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    """One round in a subprocess running ``checkout``'s code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout / "src"), str(checkout)])}
    out = subprocess.run([sys.executable, __file__, "--one-round", "--messages", str(args.messages), "--size",
                          str(args.size), "--pg-url", args.pg_url, "--redis", args.redis],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=16_000)
    p.add_argument("--size", type=int, default=500, help="batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", type=Path, help="another checkout of the project, to compare with")
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    p.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_round:
        # the code is the checkout on PYTHONPATH alone: without this, a module that checkout lacks
        # would still be found, in this one, by the editable install's finder
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        print(json.dumps(one_round(args.pg_url, args.redis, args.messages, args.size)))
        return
    ways = {"this": HERE, **({"against": args.against.resolve()} if args.against else {})}
    rounds: list[dict[str, dict[str, float]]] = [{way: _in(path, args) for way, path in ways.items()}
                                                 for _ in range(args.rounds)]
    columns = [k for k in rounds[0]["this"] if k != "decided"]
    print(f"ms a decision, batches of up to {args.size}" + "".join(f"{c:>11}" for c in columns), file=sys.stderr)
    for n, measured in enumerate(rounds, 1):
        for way, figures in measured.items():
            print(f"round {n}, {way:<24}" + "".join(f"{figures[c]:>11.4f}" for c in columns), file=sys.stderr)
    report: dict = {"size": args.size, "messages": args.messages, "rounds": rounds}
    if args.against:
        report["process_ratio"] = [round(r["this"]["process"] / r["against"]["process"], 3) for r in rounds]
        print(f"this checkout's process CPU / {args.against}'s, round by round: {report['process_ratio']}",
              file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
