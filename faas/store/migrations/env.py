"""Alembic's entry point, run by :func:`faas.store.migrations.upgrade` on the
connection it passes in ``config.attributes``: no alembic.ini, no URL of its own."""

from __future__ import annotations

from alembic import context

from faas.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying them
with context.begin_transaction():
    context.run_migrations()
