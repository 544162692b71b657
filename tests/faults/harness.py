"""The fault suite's machinery: dedicated PostgreSQL and Redis servers it may restart, a real
`matomete` deployment on them, a bare Celery sender, kombu readers, SQL checks and the report.

Nothing here imports matomete: the deployment is driven through its command line, its Celery
task names and its queues, and checked in its database with plain SQL.

* `DedicatedPostgres`: ``initdb`` into a temporary directory (as the ``postgres`` user when run as
  root) and ``pg_ctl`` on a free port — never the shared server on 5432, which other engineers
  use at the same time. `stop(mode)` / `start()` are safe to call from a test.
* `DedicatedRedis`: ``redis-server`` on a free port with ``appendonly yes`` (as docker-compose.yml
  runs it in production), ``save ""``; `restart()` stops it with SIGTERM (what ``docker restart``
  sends; Redis then writes its append-only file) and starts it again on the same files.
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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kombu
import psycopg
import redis
from celery import Celery
from cryptography.fernet import Fernet

from tests.support.services import WaitTimeout, wait_until

__all__ = [
    "CATALOG",
    "JST",
    "PG_BIN",
    "PROVIDER_SECRETS",
    "REPORT_DEFAULT",
    "DedicatedPostgres",
    "DedicatedRedis",
    "Deployment",
    "Flow",
    "WaitTimeout",
    "lines_file",
    "occurred_at",
    "report",
    "sign",
    "wait_until",
]

JST = timezone(timedelta(hours=9), "JST")
PG_BIN = Path(os.environ.get("MATOMETE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REPORT_DEFAULT = Path(__file__).resolve().parent / ".last-report.jsonl"
CLI_TIMEOUT = 120
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


# ---- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run PostgreSQL's tools as ``postgres`` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], *, timeout: float = CLI_TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a process this suite started (start_new_session=True)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL the group after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 3
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(proc.pid) or proc.poll() is None:
        kill_group(proc)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a worker's pool processes), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


# ---- dedicated servers ------------------------------------------------------------------------------

class DedicatedPostgres:
    """A PostgreSQL cluster of this test session only, in a temporary directory, on a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="matomete-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        _run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]))

    def start(self) -> None:
        # fsync off: a crash of the *server process* loses nothing (the OS still has the pages);
        # only a crash of the machine would, and no test crashes the machine.
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                f"-c full_page_writes=off -c max_connections=200")
        _run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log),
                           "-w", "-t", "60", "start"]))

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that ends every session; ``immediate``: as if it crashed."""
        _run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"]))

    def is_up(self) -> bool:
        return subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "faults") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if self.is_up():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


class DedicatedRedis:
    """A redis-server of this test session only, on a free port, with an append-only file."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="matomete-faults-redis-"))
        self.port = free_port()
        self.pidfile = self.root / "redis.pid"
        self.log = self.root / "redis.log"
        self._next_db = 0

    def start(self) -> None:
        _run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
              "--databases", "64", "--dir", str(self.root), "--pidfile", str(self.pidfile),
              "--logfile", str(self.log), "--daemonize", "yes"])
        wait_until(self.is_up, timeout=30, interval=0.1, message="the dedicated Redis to answer")

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis flushes its append-only file and exits, as under ``docker restart``."""
        pid = self.pid()
        os.kill(pid, sig)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, timeout=30, interval=0.05, message="the dedicated Redis to exit")

    def is_up(self) -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1) as r:
                return bool(r.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh_db(self) -> str:
        """A database number no earlier test of this session used, flushed."""
        self._next_db += 1
        url = self.url(self._next_db)
        with redis.Redis.from_url(url) as r:
            r.flushdb()
        return url

    def destroy(self) -> None:
        try:
            self.stop(signal.SIGKILL)
        except (OSError, ValueError, WaitTimeout):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


# ---- a deployment -------------------------------------------------------------------------------------

def matomete_bin() -> str:
    explicit = os.environ.get("MATOMETE_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "matomete"
    if beside.exists():
        return str(beside)
    found = shutil.which("matomete")
    if not found:
        raise RuntimeError("no `matomete` executable: install the project or set MATOMETE_BIN")
    return found


def bare_client(broker_url: str) -> Celery:
    client = Celery(f"faults-sender-{secrets.token_hex(3)}", broker=broker_url, backend=broker_url,
                    set_as_current=False)
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
        return _run([self.matomete, *args], env=self.env, cwd=self.workdir)

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
                     env: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen:
        """`matomete worker` (or ``argv``, for a wrapped one) named ``name@faults``."""
        base = argv or [self.matomete]
        proc = self.start(name, [*base, "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
                                 "-n", f"{name}@faults", "--without-mingle", "--without-gossip"], env=env)
        if wait:
            self.wait_for_worker(name)
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


# ---- a flow of provider messages -------------------------------------------------------------------

@dataclass
class Flow:
    """Provider messages sent over time by a background thread, and the checks of what became of them.

    Every 7th message is a monthly-flat purchase (a distinct Passport ID for each, so none is
    ALREADY_SUBSCRIBED), every 5th a void of an earlier per-use purchase, the rest per-use
    purchases: each purchase should be accepted with exactly one charge, each void accepted with
    its charge voided — whatever fault happens meanwhile."""

    deployment: Deployment
    tag: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def build(self, count: int, first_passport: int = 0) -> "Flow":
        """``count`` messages; the purchases use Passport IDs from number ``first_passport`` on
        (two flows of one deployment must not share a monthly-flat subscriber)."""
        at = occurred_at(2)
        per_use: list[str] = []
        for i in range(count):
            mid = f"{self.tag}-{i:05d}"
            if i % 5 == 4 and per_use:
                order = per_use.pop(0)
                msg = {"task": "matomete.cancel", "body": sign({
                    "message_id": mid, "occurred_at": at, "provider_id": "PB", "order_id": order})}
            elif i % 7 == 6:
                msg = {"task": "matomete.purchase", "body": sign({
                    "message_id": mid, "occurred_at": at, "provider_id": "PA", "order_id": f"o-{mid}",
                    "passport_id": passport_id(first_passport + i), "content_id": "pack", "quantity": 1})}
            else:
                msg = {"task": "matomete.purchase", "body": sign({
                    "message_id": mid, "occurred_at": at, "provider_id": "PB", "order_id": f"o-{mid}",
                    "passport_id": passport_id(first_passport + i), "content_id": "coin", "quantity": 1})}
                per_use.append(f"o-{mid}")
            self.messages.append(msg)
        return self

    def ids(self) -> list[str]:
        return [m["body"]["message_id"] for m in self.messages]

    def send_all(self, pace: float = 0.0, client: Celery | None = None,
                 on_each: Callable[[int], None] | None = None) -> None:
        for i, m in enumerate(self.messages):
            self.deployment.send(m["task"], "provider-events", m["body"], client=client)
            self.sent_at[m["body"]["message_id"]] = time.monotonic()
            if on_each:
                on_each(i)
            if pace:
                time.sleep(pace)

    def start(self, pace: float = 0.03) -> "Flow":
        """Send in a background thread (with its own Celery client), ``pace`` seconds apart."""
        client = bare_client(self.deployment.broker_url)

        def run() -> None:
            try:
                self.send_all(pace, client)
            except BaseException as exc:  # noqa: BLE001 — reported by join()
                self._error = exc
            finally:
                client.close()
        self._thread = threading.Thread(target=run, name=f"flow-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 180) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the sender thread did not finish"
        if self._error is not None:
            raise self._error

    def sent_ids(self) -> list[str]:
        return list(self.sent_at)

    # ---- what the database says
    def decisions(self) -> dict[str, dict[str, Any]]:
        rows = self.deployment.sql(
            "SELECT message_id, decision FROM inbox WHERE message_id LIKE %s", f"{self.tag}-%")
        return {mid: decision for mid, decision in rows}

    def decided(self, ids: Iterable[str] | None = None) -> int:
        wanted = set(self.ids() if ids is None else ids)
        return sum(1 for mid, d in self.decisions().items()
                   if mid in wanted and d is not None and d.get("status") != "held")

    def wait_decided(self, ids: Iterable[str] | None = None, timeout: float = 120) -> float:
        """Wait until every message of ``ids`` (default: all) has its final decision; return the
        monotonic time at which that was first seen."""
        wanted = set(self.ids() if ids is None else ids)

        def all_decided() -> float | None:
            return time.monotonic() if self.decided(wanted) == len(wanted) else None
        try:
            return wait_until(all_decided, timeout=timeout, interval=0.25,
                              message=f"{len(wanted)} messages of {self.tag} to be decided")
        except WaitTimeout as exc:
            missing = sorted(wanted - {m for m, d in self.decisions().items() if d and d.get("status") != "held"})
            raise AssertionError(f"{exc}; {len(missing)} undecided, e.g. {missing[:5]}\n"
                                 f"{self.deployment.log_tails()}") from None

    def decided_times(self, ids: Iterable[str], timeout: float = 120) -> dict[str, float]:
        """Wait until each of ``ids`` has its final decision; return when each was first seen so."""
        wanted, seen = set(ids), {}

        def all_seen() -> bool:
            now = time.monotonic()
            for mid, dec in self.decisions().items():
                if mid in wanted and mid not in seen and dec is not None and dec.get("status") != "held":
                    seen[mid] = now
            return len(seen) == len(wanted)
        try:
            wait_until(all_seen, timeout=timeout, interval=0.2, message=f"{sorted(wanted)} to be decided")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n{self.deployment.log_tails()}") from None
        return seen

    def figures(self) -> dict[str, Any]:
        """sent, decided, lost, doubled, and what went wrong, from the database."""
        d = self.deployment
        like = f"o-{self.tag}-%"
        decisions = self.decisions()
        sent = len(self.messages)
        final = {mid: dec for mid, dec in decisions.items() if dec is not None and dec.get("status") != "held"}
        inbox_rows = d.sql("SELECT count(*), count(DISTINCT (sender, message_id)) FROM inbox "
                           "WHERE message_id LIKE %s", f"{self.tag}-%")[0]
        purchases_per_order = d.sql(
            "SELECT order_id, count(*) FROM purchases WHERE order_id LIKE %s GROUP BY order_id", like)
        charges_per_order = d.sql(
            "SELECT p.order_id, count(c.id), count(c.voided_at) FROM purchases p "
            "LEFT JOIN charges c ON c.application_number = p.application_number "
            "WHERE p.order_id LIKE %s GROUP BY p.order_id", like)
        doubled = (inbox_rows[0] - inbox_rows[1]
                   + sum(n - 1 for _, n in purchases_per_order if n > 1)
                   + sum(n - 1 for _, n, _v in charges_per_order if n > 1))
        purchases = [m for m in self.messages if m["task"] == "matomete.purchase"]
        voids = {m["body"]["order_id"] for m in self.messages if m["task"] == "matomete.cancel"}
        charged = {order: (n, v) for order, n, v in charges_per_order}
        not_as_expected = sorted(
            [mid for mid, dec in final.items() if dec.get("status") != "accepted"]
            + [m["body"]["order_id"] for m in purchases
               if charged.get(m["body"]["order_id"]) != (1, 1 if m["body"]["order_id"] in voids else 0)])
        quarantined = d.sql("SELECT reason, count(*) FROM quarantine GROUP BY reason")
        return {"sent": sent, "decided": len(final), "lost": sent - len(final), "doubled": doubled,
                "not_as_expected": len(not_as_expected), "not_as_expected_examples": not_as_expected[:5],
                "quarantined": dict(quarantined)}

    def outbound_gaps(self, seen: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """Compare the outbox rows of this flow with what consumers received: every event at
        least once (no gap), duplicates only with the same event_id and body."""
        rows = self.deployment.sql("SELECT event_id, queue, body FROM outbox")  # one deployment per test
        by_event = {e: (q, json.loads(b)) for e, q, b in rows}
        received: dict[str, list[dict[str, Any]]] = {}
        for bodies in seen.values():
            for body in bodies:
                received.setdefault(body["event_id"], []).append(body)
        gaps = [e for e in by_event if e not in received]
        mismatched = [e for e, bodies in received.items()
                      if e in by_event and any(b != by_event[e][1] for b in bodies)]
        dup = sum(len(v) - 1 for v in received.values())
        return {"events": len(by_event), "received": sum(len(v) for v in received.values()),
                "gaps": len(gaps), "duplicates": dup, "mismatched": len(mismatched)}

