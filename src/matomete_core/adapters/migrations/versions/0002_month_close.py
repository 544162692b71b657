"""Month close: invoices and their items, and the recorded step of each month's close.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("billing_months") as batch_op:
        batch_op.add_column(sa.Column("step", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("charges", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("invoices", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("total", sa.BigInteger(), nullable=True))
    op.create_table(
        "invoice_items",
        sa.Column("billing_account", sa.String(length=20), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("provider_id", sa.String(length=32), nullable=False),
        sa.Column("content_id", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("billing_account", "month", "provider_id", "content_id", name=op.f("pk_invoice_items")),
    )
    op.create_table(
        "invoices",
        sa.Column("billing_account", sa.String(length=20), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("billing_account", "month", name=op.f("pk_invoices")),
    )
    op.create_index("ix_invoices_month", "invoices", ["month"])
    op.create_index("ix_charges_billing_month", "charges", ["billing_month"])


def downgrade() -> None:
    op.drop_index("ix_charges_billing_month", table_name="charges")
    op.drop_index("ix_invoices_month", table_name="invoices")
    op.drop_table("invoices")
    op.drop_table("invoice_items")
    with op.batch_alter_table("billing_months") as batch_op:
        for col in ("total", "invoices", "charges", "step"):
            batch_op.drop_column(col)
