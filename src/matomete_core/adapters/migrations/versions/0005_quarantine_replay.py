"""Quarantine replay: an operator re-runs a corrected message through the bus; the entry keeps
when that happened and the decision it got.

Revision ID: 0005_quarantine_replay
Revises: 0004_outbox_batches
"""
from alembic import op
import sqlalchemy as sa

revision = "0005_quarantine_replay"
down_revision = "0004_outbox_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine") as batch_op:
        batch_op.add_column(sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("replay_decision", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantine") as batch_op:
        batch_op.drop_column("replay_decision")
        batch_op.drop_column("replayed_at")
