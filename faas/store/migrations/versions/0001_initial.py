"""The schema of faas before migrations: every store.db made by
``Base.metadata.create_all`` without an alembic_version table is this revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contexts",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("lost_at", sa.Float, nullable=True),
    )
    op.create_table(
        "functions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("context_key", sa.String(64), sa.ForeignKey("contexts.key"), nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "context_inits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("context_key", sa.String(64), sa.ForeignKey("contexts.key"), nullable=False),
        sa.Column("worker_id", sa.String(256), sa.ForeignKey("workers.id"), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_context_inits_context_key", "context_inits", ["context_key"])
    op.create_table(
        "invocations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("function_id", sa.String(64), sa.ForeignKey("functions.id"), nullable=False),
        sa.Column("context_key", sa.String(64), sa.ForeignKey("contexts.key"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(256), nullable=True),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("dispatched_at", sa.Float, nullable=True),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("args", sa.LargeBinary, nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("history", sa.Text, nullable=True),
    )
    op.create_index("ix_invocations_finished", "invocations", ["finished_at"])
    op.create_index("ix_invocations_group_id", "invocations", ["group_id"])
    op.create_index("ix_invocations_state", "invocations", ["state"])

