"""The fault suite's deployment: matomete installed on the dedicated servers (servers.py), a bare
Celery sender, kombu readers of the outbound queues, SQL checks, and the report.

Nothing here imports matomete: the deployment is driven through its command line, its Celery
task names and its queues, and checked in its database with plain SQL.

* `Deployment`: a fresh database and Redis db, ``matomete db upgrade``, ``catalog load``,
  ``lines load``; workers started with `start_worker` in their own process group.
* `report(test, **figures)`: prints the figures and appends one JSON line to
  ``$MATOMETE_FAULT_REPORT`` (default ``tests/faults/.last-report.jsonl``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kombu
import psycopg
from celery import Celery
from cryptography.fernet import Fernet

from tests.faults.servers import kill_group, run, stop_group
from tests.support.processes import group_alive, matomete_bin, tail
from tests.support.services import WaitTimeout, wait_until

__all__ = ["CATALOG", "JST", "OUTBOUND_QUEUES", "PROVIDER_SECRETS", "REPORT_DEFAULT", "Deployment", "Tally", "WaitTimeout",
           "bare_client", "lines_file", "occurred_at", "passport_id", "report", "sign", "wait_until"]

JST = timezone(timedelta(hours=9), "JST")
REPORT_DEFAULT = Path(__file__).resolve().parent / ".last-report.jsonl"
OUTBOUND_QUEUES = ("provider-results.PA", "provider-results.PB", "billing-records")
START_TIMEOUT = 60

PROVIDER_SECRETS = {"PA": "s3cret-A-faults", "PB": "s3cret-B-faults"}
CATALOG = {"providers": [
    {"provider_id": "PA", "name": "A社", "signing_secret": PROVIDER_SECRETS["PA"],
     "contact": {"url": "https://a.example/help", "phone": "0120-000-000", "hours": "9:00-17:00"},
     "contents": [{"content_id": "pack", "name": "パックサービス", "price_type": "monthly_flat",
                   "unit_price": 525, "term_months": None}]},
    {"provider_id": "PB", "name": "B社", "signing_secret": PROVIDER_SECRETS["PB"],
     "contact": {"url": "https://b.example/support", "phone": "0120-111-111", "hours": "10:00-18:00"},
     "contents": [{"content_id": "anime1", "name": "名作アニメ1", "price_type": "monthly_flat",
                   "unit_price": 300, "term_months": None},
                  {"content_id": "coin", "name": "コイン", "price_type": "per_use",
                   "unit_price": 100, "term_months": None}]},
]}
LINE_COUNT = 8
IDS_PER_LINE = 40


def customer_id(line: int) -> str:
    return f"CAF{1000 + line:010d}"


def passport_id(n: int) -> str:
    """The n-th Passport ID of the deployment; consecutive ones fall on different lines."""
    return f"f{n % LINE_COUNT}u{n // LINE_COUNT % IDS_PER_LINE}"


def lines_file() -> dict[str, Any]:
    """LINE_COUNT lines of IDS_PER_LINE Passport IDs each; the line limit is the maximum (50,000 yen),
    far above what a fault test spends on one line."""
    return {"lines": [
        {"customer_id": customer_id(line), "access_service": "hikari_next", "access_key": f"KEY{line:05d}",
         "billing_account": f"06-1000-{line:04d}", "omatome_representative": None, "line_limit": 50000,
         "restricted": False,
         "passport_ids": [{"passport_id": f"f{line}u{k}", "status": "registered", "limit": None,
                           "restricted": False, "registered_at": "2019-04-01T10:00:00+09:00"}
                          for k in range(IDS_PER_LINE)]}
        for line in range(LINE_COUNT)]}


# ---- signing and time ---------------------------------------------------------------------------

def sign(message: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    """A copy of ``message`` with its CONTRACT.md signature (the catalog secret of its provider)."""
    body = {k: v for k, v in message.items() if k != "signature"}
    key = secret if secret is not None else PROVIDER_SECRETS[message["provider_id"]]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return {**body, "signature": hmac.new(key.encode("utf-8"), canonical, hashlib.sha256).hexdigest()}


def occurred_at(minutes_ago: float = 1.0) -> str:
    """Now minus ``minutes_ago``, in JST, never before this JST month began."""
    now = datetime.now(JST)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(now - timedelta(minutes=minutes_ago), start).isoformat(timespec="seconds")


# ---- the report ---------------------------------------------------------------------------------

def report_path() -> Path:
    return Path(os.environ.get("MATOMETE_FAULT_REPORT") or REPORT_DEFAULT)


SESSION = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}"  # groups the lines of one run


class Tally:
    """Figures a property-based test adds up over its examples, to be reported once (`report_all`)."""

    def __init__(self) -> None:
        self.tests: dict[str, Counter[str]] = {}

    def add(self, test: str, **figures: int) -> None:
        self.tests.setdefault(test, Counter()).update(figures)

    def report_all(self) -> None:
        for test, figures in self.tests.items():
            report(test, **{"lost": 0, "doubled": 0, **figures})
        self.tests.clear()


def report(test: str, **figures: Any) -> dict[str, Any]:
    """Print a test's figures and append them as one JSON line to the report file (never
    truncated: several runs may share it; ``session`` tells them apart)."""
    line = {"test": test, "session": SESSION, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{key: None for key in ("sent", "decided", "lost", "doubled", "recovery_s")}, **figures}
    print(f"\n[fault report] {json.dumps(line, ensure_ascii=False)}")
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return line


# ---- a deployment -------------------------------------------------------------------------------------

def bare_client(broker_url: str) -> Celery:
    # no result backend: these senders read decisions from the database, and a Redis backend would
    # subscribe to every sent task's result channel (and try to unsubscribe while Redis is down)
    client = Celery(f"faults-sender-{secrets.token_hex(3)}", broker=broker_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                       broker_connection_retry_on_startup=True, broker_connection_timeout=2,
                       broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 2})
    return client


@dataclass
class Deployment:
    """A real `matomete` deployment on the dedicated servers: env, CLI, workers, sender, checks."""

    database_url: str
    broker_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matomete = matomete_bin()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MATOMETE_")}
        env.update({
            "MATOMETE_DATABASE_URL": self.database_url, "MATOMETE_BROKER_URL": self.broker_url,
            "MATOMETE_RESULT_BACKEND": self.broker_url,
            "MATOMETE_SECRET_KEY": Fernet.generate_key().decode("ascii"),
            "MATOMETE_EXPORT_DIR": str(self.workdir / "exports"), "PYTHONUNBUFFERED": "1",
            "MATOMETE_METRICS_PORT": "0",  # several workers on one machine: no metrics port to fight over
            **self.extra_env,
        })
        self.env = env
        self.client = bare_client(self.broker_url)
        self.sql_url = "postgresql://" + self.database_url.split("://", 1)[1]

    # ---- set-up and processes
    def install(self) -> "Deployment":
        (self.workdir / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False), encoding="utf-8")
        (self.workdir / "lines.json").write_text(json.dumps(lines_file(), ensure_ascii=False), encoding="utf-8")
        self.cli("db", "upgrade")
        self.cli("catalog", "load", str(self.workdir / "catalog.json"))
        self.cli("lines", "load", str(self.workdir / "lines.json"))
        return self

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([self.matomete, *args], env=self.env, cwd=self.workdir)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            out.write(f"\n==== {datetime.now().isoformat()} start {' '.join(argv)}\n".encode())
            proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, cwd=self.workdir,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_worker(self, name: str = "w1", *, concurrency: int = 2, argv: list[str] | None = None,
                     env: dict[str, str] | None = None, wait: bool = True,
                     options: tuple[str, ...] = ()) -> subprocess.Popen:
        """`matomete worker` (or ``argv``, for a wrapped one) named ``name@faults``."""
        base = argv or [self.matomete]
        proc = self.start(name, [*base, "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
                                 "-n", f"{name}@faults", "--without-mingle", "--without-gossip", *options], env=env)
        if wait:
            self.wait_for_worker(name)
        return proc

    def start_batch_worker(self, name: str = "w1", *, concurrency: int = 2, size: int = 20) -> subprocess.Popen:
        """`matomete batch-worker` named ``name`` on provider-events, and a `matomete worker` named
        ``rest`` for the other queues (beat's relay among them), as README's "Micro-batches" runs them."""
        proc = self.start(name, [self.matomete, "batch-worker", "--loglevel=INFO", f"--size={size}",
                                 f"--concurrency={concurrency}"])
        self.start_worker("rest", concurrency=1, options=("-X", "provider-events"))
        return proc

    def wait_for_worker(self, name: str) -> None:
        def answers() -> bool:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode} while starting\n{self.log_tails()}")
            return bool(self.client.control.ping(destination=[f"{name}@faults"], timeout=1))
        try:
            wait_until(answers, timeout=START_TIMEOUT, interval=0.3, message=f"worker {name} to answer a ping")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from None

    def kill(self, name: str) -> None:
        """SIGKILL a process and all its pool children at once: nothing runs any clean-up."""
        proc = self.processes[name]
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not group_alive(proc.pid), timeout=30, interval=0.05)

    def close(self) -> None:
        for proc in reversed(list(self.processes.values())):
            stop_group(proc)
        self.client.close()

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(f"---- {name} ({path}) ----\n{tail(path, lines)}" for name, path in self.logs.items())

    # ---- sending
    def send(self, task: str, queue: str, message: Any = None, *, client: Celery | None = None,
             resend_for: float = 90.0) -> None:
        """Publish one task; while the broker is unreachable, publish it again (the same message,
        so the same message_id) until ``resend_for`` seconds have passed — a sender's duty when it
        has no result."""
        deadline = time.monotonic() + resend_for
        while True:
            try:
                (client or self.client).send_task(task, args=[] if message is None else [message], queue=queue)
                return
            except Exception:  # noqa: BLE001 — any broker error: try again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def publish_raw(self, queue: str, body: bytes, *, task: str = "matomete.purchase",
                    content_type: str = "application/json", drop_headers: Iterable[str] = ()) -> str:
        """A protocol-2 task message whose body is exactly ``body`` (for bodies no client would
        encode), without the headers named in ``drop_headers``."""
        task_id = f"raw-{secrets.token_hex(6)}"
        headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
                   "group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "(raw)",
                   "kwargsrepr": "{}"}
        with kombu.Connection(self.broker_url) as conn:
            producer = conn.Producer(serializer=None)
            producer.publish(body, routing_key=queue, exchange="", content_type=content_type,
                             content_encoding="utf-8", delivery_mode=2,
                             headers={k: v for k, v in headers.items() if k not in set(drop_headers)},
                             declare=[kombu.Queue(queue, routing_key=queue)])
        return task_id

    # ---- outbound queues
    def drain(self, queue: str) -> list[dict[str, Any]]:
        """Take every message now waiting on ``queue`` (acked); bodies decoded."""
        got: list[dict[str, Any]] = []
        with kombu.Connection(self.broker_url, connect_timeout=5) as conn:
            bound = kombu.Queue(queue, durable=True)(conn.default_channel)
            while True:
                message = bound.get(no_ack=False)
                if message is None:
                    return got
                body = message.body
                got.append(json.loads(body.decode("utf-8") if isinstance(body, bytes) else body))
                message.ack()

    def relay_and_wait(self, timeout: float = 60) -> None:
        """Ask a worker to relay the outbox (what beat does every 10 s) until nothing is left unpublished."""
        def published() -> bool:
            if self.sql("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0:
                return True
            self.send("matomete.relay_outbox", "matomete-housekeeping", None)
            return False
        wait_until(published, timeout=timeout, interval=2.0, message="the outbox to be relayed")

    def drain_outbound(self) -> dict[str, list[dict[str, Any]]]:
        return {q: self.drain(q) for q in OUTBOUND_QUEUES}

    # ---- the database
    def sql(self, query: str, *params: Any) -> list[tuple]:
        with psycopg.connect(self.sql_url, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()
