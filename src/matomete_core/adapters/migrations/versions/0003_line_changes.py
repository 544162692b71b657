"""Line changes: when each billing-account change took effect, so that of two changes effective in
one month the later one wins whatever order they arrive in.

Revision ID: 0003_line_changes
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003_line_changes"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("line_billing") as batch_op:
        batch_op.add_column(sa.Column("effective_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("line_billing") as batch_op:
        batch_op.drop_column("effective_at")
