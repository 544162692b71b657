"""The database schema, as SQLAlchemy Core tables: the one description Alembic migrates to.

Money is integer yen; months are ``YYYY-MM`` strings; timestamps are timezone-aware (UTC on disk).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, MetaData, Sequence,
    String, Table, Text, UniqueConstraint, text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})


class AwareDateTime(TypeDecorator):
    """A timestamp that refuses naive values and always comes back aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive timestamp: store aware timestamps only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


Id = BigInteger().with_variant(Integer(), "sqlite")
Yen = BigInteger
MonthCol = String(7)

providers = Table(
    "providers", metadata,
    Column("provider_id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("signing_secrets", Text, nullable=False),  # encrypted at rest (security.SecretBox)
    Column("contact_url", String(500)),
    Column("contact_phone", String(50)),
    Column("contact_hours", String(200)),
    Column("active", Boolean, nullable=False, server_default=text("true")),
)

contents = Table(
    "contents", metadata,
    Column("provider_id", String(32), ForeignKey("providers.provider_id"), primary_key=True),
    Column("content_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price_type", String(16), nullable=False),  # monthly_flat | per_use
    Column("unit_price", Yen, nullable=False),
    Column("term_months", Integer),
)

lines = Table(
    "lines", metadata,
    Column("customer_id", String(13), primary_key=True),
    Column("access_service", String(32), nullable=False),
    Column("access_key_hash", String(200), nullable=False),
    Column("line_limit", Yen, nullable=False),
    Column("restricted", Boolean, nullable=False, server_default=text("false")),
    Column("terminated_at", AwareDateTime()),
    Column("failed_key_attempts", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", AwareDateTime()),
)

line_billing = Table(
    "line_billing", metadata,
    Column("customer_id", String(13), ForeignKey("lines.customer_id"), primary_key=True),
    Column("from_month", MonthCol, primary_key=True),  # '0000-00': since the line was loaded
    Column("billing_account", String(20), nullable=False),
    Column("omatome_representative", String(20)),
    Column("effective_at", AwareDateTime()),  # a billing-number change's effective time; NULL: loaded
)

passport_ids = Table(
    "passport_ids", metadata,
    Column("passport_id", String(60), primary_key=True),
    Column("customer_id", String(13), ForeignKey("lines.customer_id"), nullable=False, index=True),
    Column("status", String(16), nullable=False),  # registered | registering
    Column("limit", Yen),
    Column("restricted", Boolean, nullable=False, server_default=text("false")),
    Column("registered_at", AwareDateTime()),
    Column("deleted_at", AwareDateTime()),
)

application_number_seq = Sequence("application_number_seq", start=10001)

purchases = Table(
    "purchases", metadata,
    Column("application_number", Id, application_number_seq, primary_key=True),
    Column("provider_id", String(32), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("passport_id", String(60), nullable=False),
    Column("customer_id", String(13), nullable=False),
    Column("content_id", String(64), nullable=False),
    Column("price_type", String(16), nullable=False),
    Column("unit_price", Yen, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("purchased_at", AwareDateTime(), nullable=False),
    Column("start_month", MonthCol, nullable=False),
    Column("last_month", MonthCol),  # monthly flat: last billable month, NULL while it runs on
    Column("term_months", Integer),
    Column("cancelled_at", AwareDateTime()),
    Column("end_cause", String(16)),  # cancel | line_change | term_end
    Column("dedupe_key", String(160)),  # monthly flat: see charges.dedupe_key
    UniqueConstraint("provider_id", "order_id"),
    Index("ix_purchases_customer_type", "customer_id", "price_type"),
    Index("ix_purchases_dedupe_key", "dedupe_key"),
    sqlite_autoincrement=True,
)

charges = Table(
    "charges", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("application_number", Id, ForeignKey("purchases.application_number"), nullable=False),
    Column("customer_id", String(13), nullable=False),
    Column("passport_id", String(60), nullable=False),
    Column("provider_id", String(32), nullable=False),
    Column("content_id", String(64), nullable=False),
    Column("service_month", MonthCol, nullable=False),  # the month the charge is for
    Column("billing_month", MonthCol, nullable=False),  # the month it is billed in (later if late)
    Column("quantity", Integer, nullable=False),
    Column("amount", Yen, nullable=False),
    Column("late", Boolean, nullable=False, server_default=text("false")),
    Column("voided_at", AwareDateTime()),
    # monthly flat: 'passport|provider|content' — a month is billed once per Passport ID and content
    Column("dedupe_key", String(160)),
    UniqueConstraint("application_number", "service_month"),
    UniqueConstraint("dedupe_key", "service_month"),
    Index("ix_charges_customer_month", "customer_id", "billing_month"),
    Index("ix_charges_passport_month", "passport_id", "billing_month"),
    # a line's charges of a month whichever month index the planner picks (migration 0006)
    Index("ix_charges_billing_month_customer", "billing_month", "customer_id"),
)

billing_months = Table(
    "billing_months", metadata,
    Column("month", MonthCol, primary_key=True),  # no row: the month is open
    Column("status", String(16), nullable=False),  # closing | closed
    Column("closing_at", AwareDateTime(), nullable=False),
    Column("closed_at", AwareDateTime()),
    Column("step", String(16)),  # the last step of close_month that committed
    Column("charges", BigInteger),
    Column("invoices", BigInteger),
    Column("total", Yen),
)

invoice_items = Table(
    "invoice_items", metadata,
    Column("billing_account", String(20), primary_key=True),  # the invoiced account (おまとめ: the representative)
    Column("month", MonthCol, primary_key=True),
    Column("provider_id", String(32), primary_key=True),
    Column("content_id", String(64), primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    Column("amount", Yen, nullable=False),
)

invoices = Table(
    "invoices", metadata,
    Column("billing_account", String(20), primary_key=True),
    Column("month", MonthCol, primary_key=True),
    Column("total", Yen, nullable=False),
    Index("ix_invoices_month", "month"),
)

inbox = Table(
    "inbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sender", String(64), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("task", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("order_id", String(64)),
    Column("decision", JSON),
    Column("received_at", AwareDateTime(), nullable=False),
    UniqueConstraint("sender", "message_id"),
    Index("ix_inbox_sender_order", "sender", "order_id"),
)

held_cancels = Table(
    "held_cancels", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inbox_id", Id, ForeignKey("inbox.id"), nullable=False),
    Column("provider_id", String(32), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("occurred_at", AwareDateTime(), nullable=False),
    Column("received_at", AwareDateTime(), nullable=False),
    Index("ix_held_cancels_order", "provider_id", "order_id"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("queue", String(100), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", AwareDateTime(), nullable=False),
    Column("published_at", AwareDateTime()),
    # a batch row stands for many messages the relay builds as it goes (see adapters.relay):
    # 'renewal_charges' or 'invoices' of the month in `body`; `cursor` is how far it got
    Column("batch", String(32)),
    Column("cursor", String(64)),
    Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL"),
          sqlite_where=text("published_at IS NULL")),
)

quarantine = Table(
    "quarantine", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("sender", String(64)),
    Column("message_id", String(128)),
    Column("body_hash", String(64), nullable=False),
    Column("received_at", AwareDateTime(), nullable=False),
    Column("message", Text, nullable=False),  # redacted of every secret
    # `matomete quarantine replay`: when the message was decided again, and that decision
    Column("replayed_at", AwareDateTime()),
    Column("replay_decision", JSON),
    UniqueConstraint("task", "reason", "body_hash"),
)
