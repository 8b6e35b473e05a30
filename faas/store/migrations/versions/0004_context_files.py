"""Record the bytes of context files each worker copied, from the source and from peers.

Workers stage a context's files in their node's cache, reading the source once
per fleet and copying from each other; ``report`` sums these per context.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "context_files",
        sa.Column("worker_id", sa.String(256), sa.ForeignKey("workers.id"), primary_key=True),
        sa.Column("context_key", sa.String(64), primary_key=True),
        sa.Column("source_bytes", sa.BigInteger(), nullable=False),
        sa.Column("peer_bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
