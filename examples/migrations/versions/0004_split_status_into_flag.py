"""add orders.is_open and backfill it from status (data migration)

Revision ID: 0004_is_open
Revises: 0003_orders_idx
Create Date: 2026-11-21 10:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_is_open"
down_revision = "0003_orders_idx"
branch_labels = None
depends_on = None

orders = sa.table("orders", sa.column("status", sa.String), sa.column("is_open", sa.Boolean))


def upgrade() -> None:
    # Add as nullable, backfill, then tighten: the pattern that keeps old app pods working.
    op.add_column("orders", sa.Column("is_open", sa.Boolean, nullable=True))
    op.execute(orders.update().values(is_open=orders.c.status.in_(["new", "paid"])))
    with op.batch_alter_table("orders") as batch:
        batch.alter_column(
            "is_open", existing_type=sa.Boolean, nullable=False, server_default=sa.true()
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("is_open")
