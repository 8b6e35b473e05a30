"""Schema revisions of the store (Alembic, scripts in ``versions/``), applied when a Store opens.

- A store at :data:`HEAD` opens without importing Alembic (every CLI call opens the store).
- An empty database gets the tables of :mod:`faas.store.models` at once and is stamped HEAD,
  rather than replaying every revision.
- A store made before faas had migrations (its tables, no ``alembic_version``) is
  stamped :data:`LEGACY`, the schema it has, then upgraded.
- A store at a revision this faas does not know was written by a newer faas: it is refused.

The upgrade runs in one transaction under a lock (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: an advisory lock), so a daemon starting while ``faas-endpoint
upgrade`` runs waits, then finds the store upgraded.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine

from faas.errors import StoreUnavailable
from faas.store.models import Base

HEAD = "0004"  # the newest revision in versions/ (a test checks)
LEGACY = "0001"  # the schema of stores made before migrations
_PG_LOCK = 0x66616173  # "faas": the advisory lock key that serialises upgrades


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the store to HEAD; returns (its revision before, HEAD); None before: it was empty."""
    with engine.connect() as conn:
        before = _stamped(conn)
    if before == HEAD:
        return before, HEAD
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        before = _stamped(conn)  # again: another process may have upgraded it meanwhile
        if before == HEAD:
            return before, HEAD
        from alembic import command

        config = alembic_config(conn)
        if before is None and not inspect(conn).has_table("invocations"):
            Base.metadata.create_all(conn)
            command.stamp(config, HEAD)
            return None, HEAD
        if before is None:
            command.stamp(config, LEGACY)
            before = LEGACY
        elif before not in _known(config):
            raise StoreUnavailable(f"the store is at schema revision {before}, which this faas does not know: it "
                                   f"was written by a newer faas (this one's newest revision is {HEAD}); "
                                   f"upgrade faas to use it")
        command.upgrade(config, HEAD)
    return before, HEAD


def _stamped(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.scalar(text("SELECT version_num FROM alembic_version"))


def alembic_config(conn: Connection):
    """Alembic's configuration for ``alembic.command`` on ``conn``, made here rather than read
    from an alembic.ini: env.py takes the connection from its attributes."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config


def _known(config) -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
