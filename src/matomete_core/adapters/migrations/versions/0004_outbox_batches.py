"""Outbox batches: one outbox row stands for many messages (a month's renewal charges, its
invoices) that the relay expands in chunks, keeping its place in ``cursor``.

Revision ID: 0004_outbox_batches
Revises: 0003_line_changes
"""
from alembic import op
import sqlalchemy as sa

revision = "0004_outbox_batches"
down_revision = "0003_line_changes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(sa.Column("batch", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("cursor", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_column("cursor")
        batch_op.drop_column("batch")
