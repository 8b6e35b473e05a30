"""Index invocations by (group_id, state) instead of group_id alone.

A reattaching client asks for its group's final results (``final_results(group_id=...)``:
group and state), and the group's ids (``group_ids``: group only, which the
index's first column serves). One index on both replaces the group_id index,
so the store writes no more index entries per invocation than before.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_invocations_group_state", "invocations", ["group_id", "state"])
    op.drop_index("ix_invocations_group_id", table_name="invocations")

