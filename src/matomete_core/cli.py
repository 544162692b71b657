"""The ``matomete`` command line (CONTRACT.md). Bad input: a one-line message and a non-zero exit."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from functools import wraps
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from matomete_core.config import Settings
from matomete_core.errors import MatometeError

MONTH_ARG = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
console = Console()


def _deps():  # noqa: ANN202
    from matomete_core.service.deps import bootstrap

    return bootstrap(Settings.from_env())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, indent=2))


def _month(value: str) -> str:
    if not MONTH_ARG.match(value):
        raise click.BadParameter(f"{value!r} is not a month YYYY-MM")
    return value


def one_line_errors(fn: Callable) -> Callable:
    """Domain and database errors end the command with one line on stderr, exit 1."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return fn(*args, **kwargs)
        except MatometeError as exc:
            click.echo(f"matomete: {exc}", err=True)
            sys.exit(1)
        except SQLAlchemyError as exc:
            click.echo(f"matomete: database error: {type(exc).__name__}: {str(exc).splitlines()[0]}", err=True)
            sys.exit(1)
    return wrapper


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*["" if v is None else str(v) for v in r])
    console.print(table)


@click.group()
def cli() -> None:
    """matomete — the back office of フレッツ・まとめて支払い."""


def main(argv: list[str] | None = None) -> None:
    """The console script: usage errors, like every other error, are one line on stderr."""
    try:
        status = cli.main(args=argv, prog_name="matomete", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("matomete: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"matomete: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    if isinstance(status, int) and status:  # a command's ctx.exit(status): worker and beat (_celery)
        sys.exit(status)


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Create or migrate the database schema."""
    from matomete_core.adapters.migrate import upgrade

    upgrade(Settings.from_env().database_url)
    click.echo("database is at the latest schema")


@cli.group()
def catalog() -> None:
    """Providers and their contents."""


@catalog.command("load")
@click.argument("file", type=click.Path(dir_okay=False))
@one_line_errors
def catalog_load(file: str) -> None:
    """Upsert providers and their contents from FILE."""
    from matomete_core.service.loading import load_catalog

    d = _deps()
    counts = load_catalog(d.engine, d.secrets, file)
    click.echo(f"loaded {counts['providers']} providers, {counts['contents']} contents")


@cli.group("lines")
def lines_group() -> None:
    """Lines, billing accounts and existing Passport IDs."""


@lines_group.command("load")
@click.argument("file", type=click.Path(dir_okay=False))
@one_line_errors
def lines_load(file: str) -> None:
    """Upsert lines, billing accounts, おまとめ groups and Passport IDs from FILE."""
    from matomete_core.service.loading import load_lines

    d = _deps()
    counts = load_lines(d.engine, d.settings, file)
    click.echo(f"loaded {counts['lines']} lines, {counts['passport_ids']} Passport IDs")


CELERY_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@cli.command(context_settings=CELERY_PASSTHROUGH)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a worker on all inbound queues, serving metrics on MATOMETE_METRICS_PORT (default 9808)
    (extra options go to celery worker)."""
    from workers import multiproc

    multiproc.prepare()  # before prometheus_client is imported: it picks its mode then
    from workers import logging as json_logs, metrics
    from workers.app import HOUSEKEEPING_QUEUE, INBOUND_QUEUES

    json_logs.install()
    try:
        metrics.enable()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    queues = ",".join((*INBOUND_QUEUES, HOUSEKEEPING_QUEUE))
    _celery(ctx, ["worker", "-Q", queues, *ctx.args])


@cli.command("batch-worker")
@click.option("--size", default=500, type=click.IntRange(1, 5000), show_default=True,
              help="most messages decided in one batch")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="batch processes, each deciding one batch at a time  [default: the number of CPUs]")
@click.option("--loglevel", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def batch_worker(size: int, concurrency: int | None, loglevel: str) -> None:
    """Decide provider-events in micro-batches (README, "Micro-batches"); the other queues need a
    `matomete worker` beside it (`-X provider-events` to leave this queue to the batch workers)."""
    import logging
    import os

    from workers import multiproc

    multiproc.prepare()
    from workers import batch_pool, logging as json_logs, metrics

    logging.basicConfig(level=loglevel)
    json_logs.use_json(logging.getLogger())
    try:
        port = metrics.configured_port()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if port:
        metrics.serve(port, Settings.from_env())
    batch_pool.run(size, concurrency or os.cpu_count() or 1, loglevel)


@cli.command(context_settings=CELERY_PASSTHROUGH)
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the schedule: outbox relay, held-cancel expiry (extra options go to celery beat)."""
    from workers import logging as json_logs

    json_logs.install()
    _celery(ctx, ["beat", *ctx.args])


def _celery(ctx: click.Context, argv: list[str]) -> None:
    """Run a Celery command on the app (workers.app) and exit with its status. ``app.worker_main``
    and ``app.start`` drop it (click, not standalone, returns the status rather than raising it): a
    worker that stopped on an "Unrecoverable error" exited 0, and a supervisor that restarts only
    failed processes (systemd's ``Restart=on-failure``) left it down."""
    from celery.bin.celery import celery

    status = celery.main(args=["--app", "workers.app:app", *argv], prog_name="celery", standalone_mode=False)
    ctx.exit(status if isinstance(status, int) else 0)


@cli.command()
@click.argument("customer_id")
@click.argument("month", callback=lambda _c, _p, v: _month(v))
@click.option("--passport-id", default=None)
@click.option("--page", default=1, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def statement(customer_id: str, month: str, passport_id: str | None, page: int, as_json: bool) -> None:
    """ご利用明細: a line's charges for a billing month."""
    from matomete_core.service.views import statement as view

    doc = view(_deps().engine, customer_id, month, passport_id=passport_id, page=page)
    if as_json:
        return _print_json(doc)
    _table(f"ご利用明細 {customer_id} {month} (page {doc['page']}/{doc['pages']}, total {doc['total_amount']:,} yen)",
           ["申込受付番号", "Passport ID", "provider", "content", "unit", "qty", "amount", "type", "start", "end"],
           [[r["application_number"], r["passport_id"], r["provider_name"], r["content_name"], r["unit_price"],
             r["quantity"], r["amount"], r["price_type"], r["start_date"], r["end_date"]] for r in doc["rows"]])


@cli.group()
def passport() -> None:
    """Passport IDs."""


@passport.command("show")
@click.argument("passport_id")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def passport_show(passport_id: str, as_json: bool) -> None:
    """Details of a Passport ID, with this month's usage."""
    from matomete_core.service.views import passport_details

    doc = passport_details(_deps().engine, passport_id, now=_now())
    if as_json:
        return _print_json(doc)
    _table(f"Passport ID {passport_id}", ["field", "value"], [[k, v] for k, v in doc.items()])


@cli.group("line")
def line_group() -> None:
    """One line (customer ID)."""


@line_group.command("show")
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def line_show(customer_id: str, as_json: bool) -> None:
    """A line's status, restriction, limit, this month's usage and billing account, and its IDs."""
    from matomete_core.service.line_view import line_details

    doc = line_details(_deps().engine, customer_id, now=_now())
    if as_json:
        return _print_json(doc)
    _table(f"line {customer_id}", ["field", "value"], [[k, v] for k, v in doc.items() if k != "passport_ids"])
    _table(f"Passport IDs of {customer_id} ({doc['month']})", ["Passport ID", "status", "restricted", "limit",
                                                               "usage", "registered_at"],
           [[p["passport_id"], p["status"], p["restricted"], p["limit"], p["usage"], p["registered_at"]]
            for p in doc["passport_ids"]])


@cli.command()
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def inquiries(customer_id: str, as_json: bool) -> None:
    """お問合せ先一覧: the providers a line has bought from."""
    from matomete_core.service.views import inquiries as view

    doc = view(_deps().engine, customer_id)
    if as_json:
        return _print_json(doc)
    _table(f"お問合せ先一覧 {customer_id}", ["provider", "name", "url", "phone", "hours"],
           [[p["provider_id"], p["name"], p["url"], p["phone"], p["hours"]] for p in doc["providers"]])


@cli.group("quarantine")
def quarantine_group() -> None:
    """Messages that could not be decided."""


@quarantine_group.command("list")
@click.option("--replayed", is_flag=True, help="also the messages replayed already")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def quarantine_list(replayed: bool, as_json: bool) -> None:
    """The quarantined messages waiting for an operator, redacted of secrets."""
    from matomete_core.service.quarantine import list_quarantined

    messages = list_quarantined(_deps().engine, replayed=replayed)
    if as_json:
        return _print_json({"messages": messages})
    _table("quarantine", ["id", "task", "reason", "detail", "received_at", *(["replayed_at"] if replayed else [])],
           [[m["id"], m["task"], m["reason"], m["detail"], m["received_at"], *([m["replayed_at"]] if replayed else [])]
            for m in messages])


@quarantine_group.command("replay")
@click.argument("entry", metavar="ID", type=int)
@click.option("--message", "message_file", type=click.Path(dir_okay=False),
              help="the corrected message (JSON), e.g. signed again by its provider")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def quarantine_replay(entry: int, message_file: str | None, as_json: bool) -> None:
    """Decide a quarantined message again through the bus; exits 1 if it is quarantined again."""
    from matomete_core.service.replay import replay

    message = None
    if message_file is not None:
        try:
            with open(message_file, encoding="utf-8") as f:
                message = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise click.BadParameter(f"{message_file}: not a JSON message ({exc})", param_hint="--message")
    decision = replay(_deps(), entry, now=_now(), message=message)
    if as_json:
        _print_json(decision)
    else:
        facts = ", ".join(f"{k} {decision[k]}" for k in ("reason", "application_number", "billing_month")
                          if decision.get(k))
        click.echo(f"quarantined message {entry} replayed: {decision['status']}" + (f" ({facts})" if facts else "")
                   + (", decided before" if decision.get("replayed") else ""))
    if decision["status"] == "quarantined":
        click.echo(f"matomete: still quarantined ({decision['reason']}): see `matomete quarantine list`", err=True)
        sys.exit(1)


@cli.command("close-month")
@click.argument("month", callback=lambda _c, _p, v: _month(v))
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def close_month_cmd(month: str, as_json: bool) -> None:
    """Close a month that has ended (JST); idempotent, resumes a close that was interrupted."""
    from matomete_core.service.close import STEPS, close_month

    d = _deps()
    if as_json or not sys.stdout.isatty():
        return _print_json(close_month(d.engine, month, now=_now(), export_dir=d.settings.export_dir))
    from rich.progress import Progress

    with Progress(console=console) as bar:
        task = bar.add_task(f"closing {month}", total=len(STEPS))
        result = close_month(d.engine, month, now=_now(), export_dir=d.settings.export_dir,
                             progress=lambda step, done, _total: bar.update(task, completed=done,
                                                                            description=f"closing {month}: {step}"))
    console.print(f"{month} closed: {result['charges']:,} charges, {result['invoices']:,} invoices, "
                  f"{result['total']:,} yen")


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("what", nargs=-1, required=True)
@click.option("--billing-account", default=None)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def invoice(what: tuple[str, ...], billing_account: str | None, as_json: bool) -> None:
    """The month's invoices: `invoice YYYY-MM`; what the open month would bill: `invoice preview CUSTOMER_ID`."""
    from matomete_core.service.invoices import preview, stored_invoices

    d = _deps()
    if what[0] == "preview":
        if len(what) != 2:
            raise click.UsageError("usage: matomete invoice preview CUSTOMER_ID [--json]")
        doc = preview(d.engine, what[1], now=_now())
        if as_json:
            return _print_json(doc)
        return _invoice_table(doc, f"preview {doc['customer_id']} {doc['month']}")
    if len(what) != 1:
        raise click.UsageError("usage: matomete invoice YYYY-MM [--billing-account X] [--json]")
    month = _month(what[0])
    docs = list(stored_invoices(d.engine, month, billing_account))
    if as_json:
        return _print_json({"month": month, "invoices": docs})
    for doc in docs:
        _invoice_table(doc, doc["billing_account"])


def _invoice_table(doc: dict, caption: str) -> None:
    _table(f"{doc['title']} {caption}: {doc['total']:,} yen", ["provider", "content", "qty", "amount"],
           [[i["provider_name"], i["content_name"], i["quantity"], f"{i['amount']:,}"] for i in doc["items"]])


@cli.command("verify-month")
@click.argument("month", callback=lambda _c, _p, v: _month(v))
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def verify_month_cmd(month: str, as_json: bool) -> None:
    """Recompute a closed month and compare with what was stored; exits 1 on any difference."""
    from matomete_core.service.verify import verify_month

    report = verify_month(_deps().engine, month)
    if as_json:
        _print_json(report)
    else:
        for diff in report["differences"]:
            click.echo(" ".join(f"{k}={v}" for k, v in diff.items()))
        click.echo(f"{month}: {'ok' if report['ok'] else str(len(report['differences'])) + ' difference(s)'}")
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@click.argument("month", callback=lambda _c, _p, v: _month(v))
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def settlement(month: str, as_json: bool) -> None:
    """What each provider is owed for a month, by content."""
    from matomete_core.service.invoices import settlement as view

    doc = view(_deps().engine, month)
    if as_json:
        return _print_json(doc)
    _table(f"settlement {month} ({'final' if doc['final'] else 'month still open'}): {doc['total']:,} yen",
           ["provider", "content", "charges", "qty", "amount"],
           [[p["name"], c["name"], c["charges"], c["quantity"], f"{c['amount']:,}"]
            for p in doc["providers"] for c in p["contents"]])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def demo(as_json: bool) -> None:
    """An end-to-end run on the embedded default: SQLite and an in-process broker, no servers."""
    from workers.demo import run

    run(as_json=as_json, console=console if console.is_terminal else Console(width=120))
