"""Record each function's batch size.

The dispatcher sizes batches so that a worker can fill one merged call of a
batched function; after a restart it knows the function only from the store,
so the size is recorded with it. Functions recorded before are unbatched (1).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("functions") as batch:  # SQLite: batch mode rebuilds the table where it must
        batch.add_column(sa.Column("batch_size", sa.Integer(), nullable=False, server_default="1"))
