"""Initial schema: catalog, lines, Passport IDs, purchases, charges, inbox, outbox, quarantine.

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 07:26:16.204659
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute(sa.schema.CreateSequence(sa.Sequence("application_number_seq", start=10001)))
    op.create_table('billing_months',
    sa.Column('month', sa.String(length=7), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('closing_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('month', name=op.f('pk_billing_months'))
    )
    op.create_table('inbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sender', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('order_id', sa.String(length=64), nullable=True),
    sa.Column('decision', sa.JSON(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox')),
    sa.UniqueConstraint('sender', 'message_id', name=op.f('uq_inbox_sender_message_id'))
    )
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_sender_order', ['sender', 'order_id'], unique=False)

    op.create_table('lines',
    sa.Column('customer_id', sa.String(length=13), nullable=False),
    sa.Column('access_service', sa.String(length=32), nullable=False),
    sa.Column('access_key_hash', sa.String(length=200), nullable=False),
    sa.Column('line_limit', sa.BigInteger(), nullable=False),
    sa.Column('restricted', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('terminated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_key_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_lines'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('queue', sa.String(length=100), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('event_id', name=op.f('uq_outbox_event_id'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_unpublished', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.create_table('providers',
    sa.Column('provider_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('signing_secrets', sa.Text(), nullable=False),
    sa.Column('contact_url', sa.String(length=500), nullable=True),
    sa.Column('contact_phone', sa.String(length=50), nullable=True),
    sa.Column('contact_hours', sa.String(length=200), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text('(true)'), nullable=False),
    sa.PrimaryKeyConstraint('provider_id', name=op.f('pk_providers'))
    )
    op.create_table('purchases',
    sa.Column('application_number', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False,
              autoincrement=not postgres,
              server_default=sa.text("nextval('application_number_seq')") if postgres else None),
    sa.Column('provider_id', sa.String(length=32), nullable=False),
    sa.Column('order_id', sa.String(length=64), nullable=False),
    sa.Column('passport_id', sa.String(length=60), nullable=False),
    sa.Column('customer_id', sa.String(length=13), nullable=False),
    sa.Column('content_id', sa.String(length=64), nullable=False),
    sa.Column('price_type', sa.String(length=16), nullable=False),
    sa.Column('unit_price', sa.BigInteger(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('purchased_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('start_month', sa.String(length=7), nullable=False),
    sa.Column('last_month', sa.String(length=7), nullable=True),
    sa.Column('term_months', sa.Integer(), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_cause', sa.String(length=16), nullable=True),
    sa.Column('dedupe_key', sa.String(length=160), nullable=True),
    sa.PrimaryKeyConstraint('application_number', name=op.f('pk_purchases')),
    sa.UniqueConstraint('provider_id', 'order_id', name=op.f('uq_purchases_provider_id_order_id')),
    sqlite_autoincrement=True
    )
    if bind.dialect.name == "sqlite":
        op.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('purchases', 10000)")
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.create_index('ix_purchases_customer_type', ['customer_id', 'price_type'], unique=False)
        batch_op.create_index('ix_purchases_dedupe_key', ['dedupe_key'], unique=False)

    op.create_table('quarantine',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('sender', sa.String(length=64), nullable=True),
    sa.Column('message_id', sa.String(length=128), nullable=True),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine')),
    sa.UniqueConstraint('task', 'reason', 'body_hash', name=op.f('uq_quarantine_task_reason_body_hash'))
    )
    op.create_table('charges',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('application_number', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False,
              autoincrement=not postgres,
              server_default=sa.text("nextval('application_number_seq')") if postgres else None),
    sa.Column('customer_id', sa.String(length=13), nullable=False),
    sa.Column('passport_id', sa.String(length=60), nullable=False),
    sa.Column('provider_id', sa.String(length=32), nullable=False),
    sa.Column('content_id', sa.String(length=64), nullable=False),
    sa.Column('service_month', sa.String(length=7), nullable=False),
    sa.Column('billing_month', sa.String(length=7), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('late', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('voided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dedupe_key', sa.String(length=160), nullable=True),
    sa.ForeignKeyConstraint(['application_number'], ['purchases.application_number'], name=op.f('fk_charges_application_number_purchases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charges')),
    sa.UniqueConstraint('application_number', 'service_month', name=op.f('uq_charges_application_number_service_month')),
    sa.UniqueConstraint('dedupe_key', 'service_month', name=op.f('uq_charges_dedupe_key_service_month'))
    )
    with op.batch_alter_table('charges', schema=None) as batch_op:
        batch_op.create_index('ix_charges_customer_month', ['customer_id', 'billing_month'], unique=False)
        batch_op.create_index('ix_charges_passport_month', ['passport_id', 'billing_month'], unique=False)

    op.create_table('contents',
    sa.Column('provider_id', sa.String(length=32), nullable=False),
    sa.Column('content_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('price_type', sa.String(length=16), nullable=False),
    sa.Column('unit_price', sa.BigInteger(), nullable=False),
    sa.Column('term_months', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.provider_id'], name=op.f('fk_contents_provider_id_providers')),
    sa.PrimaryKeyConstraint('provider_id', 'content_id', name=op.f('pk_contents'))
    )
    op.create_table('held_cancels',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('inbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.String(length=32), nullable=False),
    sa.Column('order_id', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['inbox_id'], ['inbox.id'], name=op.f('fk_held_cancels_inbox_id_inbox')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_held_cancels'))
    )
    with op.batch_alter_table('held_cancels', schema=None) as batch_op:
        batch_op.create_index('ix_held_cancels_order', ['provider_id', 'order_id'], unique=False)

    op.create_table('line_billing',
    sa.Column('customer_id', sa.String(length=13), nullable=False),
    sa.Column('from_month', sa.String(length=7), nullable=False),
    sa.Column('billing_account', sa.String(length=20), nullable=False),
    sa.Column('omatome_representative', sa.String(length=20), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['lines.customer_id'], name=op.f('fk_line_billing_customer_id_lines')),
    sa.PrimaryKeyConstraint('customer_id', 'from_month', name=op.f('pk_line_billing'))
    )
    op.create_table('passport_ids',
    sa.Column('passport_id', sa.String(length=60), nullable=False),
    sa.Column('customer_id', sa.String(length=13), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('limit', sa.BigInteger(), nullable=True),
    sa.Column('restricted', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['lines.customer_id'], name=op.f('fk_passport_ids_customer_id_lines')),
    sa.PrimaryKeyConstraint('passport_id', name=op.f('pk_passport_ids'))
    )
    with op.batch_alter_table('passport_ids', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_passport_ids_customer_id'), ['customer_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('passport_ids', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_passport_ids_customer_id'))

    op.drop_table('passport_ids')
    op.drop_table('line_billing')
    with op.batch_alter_table('held_cancels', schema=None) as batch_op:
        batch_op.drop_index('ix_held_cancels_order')

    op.drop_table('held_cancels')
    op.drop_table('contents')
    with op.batch_alter_table('charges', schema=None) as batch_op:
        batch_op.drop_index('ix_charges_passport_month')
        batch_op.drop_index('ix_charges_customer_month')

    op.drop_table('charges')
    op.drop_table('quarantine')
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_purchases_dedupe_key')
        batch_op.drop_index('ix_purchases_customer_type')

    op.drop_table('purchases')
    op.drop_table('providers')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_unpublished', postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.drop_table('outbox')
    op.drop_table('lines')
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_sender_order')

    op.drop_table('inbox')
    op.drop_table('billing_months')
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.DropSequence(sa.Sequence("application_number_seq")))
