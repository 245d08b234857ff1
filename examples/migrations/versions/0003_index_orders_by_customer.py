"""index orders by customer and time

Revision ID: 0003_orders_idx
Revises: 0002_orders
Create Date: 2026-11-21 10:10:00
"""

from alembic import op

revision = "0003_orders_idx"
down_revision = "0002_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_orders_customer_placed", "orders", ["customer_id", "placed_at"])


def downgrade() -> None:
    op.drop_index("ix_orders_customer_placed", table_name="orders")
