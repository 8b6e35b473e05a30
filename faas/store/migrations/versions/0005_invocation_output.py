"""Record what each invocation wrote.

What an invocation writes to stdout and stderr, and the log records it emits,
travel with its outcome (the last 64 KiB); the store keeps them so that a client
that reattaches (``reload_tasks``) and ``faas-endpoint report`` show them too.
Invocations recorded before have none (NULL).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invocations") as batch:  # SQLite: batch mode rebuilds the table where it must
        batch.add_column(sa.Column("output", sa.Text(), nullable=True))
