"""Schema migrations on real SQLite and a real PostgreSQL server: a store made
before faas had migrations is stamped and upgraded with its rows kept, a new
store matches the models, a store from a newer faas is refused; and the store
file's identity (a store.db deleted or replaced under the daemon is noticed,
and read-only commands never create an empty one)."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import cli, local_config, write_config
from sqlalchemy import create_engine, inspect, text

from faas.errors import StoreUnavailable
from faas.store import State, Store, migrations, sqlite_url
from faas.store.migrations import HEAD, LEGACY
from faas.store.models import Base

# The tables as faas made them before migrations (Base.metadata.create_all, no alembic_version)
PREVIOUS_SCHEMA = """
CREATE TABLE contexts ("key" VARCHAR(64) NOT NULL, description TEXT NOT NULL, created_at FLOAT NOT NULL,
    PRIMARY KEY ("key"));
CREATE TABLE workers (id VARCHAR(256) NOT NULL, host VARCHAR(256) NOT NULL, pid INTEGER NOT NULL,
    first_seen FLOAT NOT NULL, last_seen FLOAT NOT NULL, lost_at FLOAT, PRIMARY KEY (id));
CREATE TABLE functions (id VARCHAR(64) NOT NULL, name VARCHAR(256) NOT NULL, context_key VARCHAR(64) NOT NULL,
    retries INTEGER NOT NULL, body {blob} NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(context_key) REFERENCES contexts ("key"));
CREATE TABLE context_inits (id {serial} NOT NULL, context_key VARCHAR(64) NOT NULL, worker_id VARCHAR(256) NOT NULL,
    started_at FLOAT NOT NULL, seconds FLOAT NOT NULL, error TEXT, PRIMARY KEY (id),
    FOREIGN KEY(context_key) REFERENCES contexts ("key"), FOREIGN KEY(worker_id) REFERENCES workers (id));
CREATE INDEX ix_context_inits_context_key ON context_inits (context_key);
CREATE TABLE invocations (id VARCHAR(64) NOT NULL, group_id VARCHAR(64) NOT NULL, function_id VARCHAR(64) NOT NULL,
    context_key VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, worker_id VARCHAR(256),
    submitted_at FLOAT NOT NULL, dispatched_at FLOAT, started_at FLOAT, finished_at FLOAT, args {blob} NOT NULL,
    result {blob}, error TEXT, history TEXT, PRIMARY KEY (id), FOREIGN KEY(function_id) REFERENCES functions (id),
    FOREIGN KEY(context_key) REFERENCES contexts ("key"));
CREATE INDEX ix_invocations_finished ON invocations (finished_at);
CREATE INDEX ix_invocations_group_id ON invocations (group_id);
CREATE INDEX ix_invocations_state ON invocations (state);
INSERT INTO contexts VALUES ('ctx', 'loader()', 1.0);
INSERT INTO workers VALUES ('h:1', 'h', 1, 1.0, 5.0, NULL);
INSERT INTO functions VALUES ('f', 'fn', 'ctx', 0, {body}, 1.0);
INSERT INTO context_inits (context_key, worker_id, started_at, seconds, error) VALUES ('ctx', 'h:1', 2.0, 0.5, NULL);
INSERT INTO invocations VALUES ('a', 'g', 'f', 'ctx', 'succeeded', 1, 'h:1', 1.0, 1.5, 2.0, 3.0, {args}, {result},
    NULL, NULL);
INSERT INTO invocations VALUES ('b', 'g', 'f', 'ctx', 'pending', 1, NULL, 1.0, 1.5, NULL, NULL, {args}, NULL, NULL,
    'lost with its worker\n');
"""


def make_previous_store(url: str) -> None:
    engine = create_engine(url)
    blob, serial = ("BYTEA", "SERIAL") if engine.dialect.name == "postgresql" else ("BLOB", "INTEGER")
    literal = "'\\x{}'::bytea" if engine.dialect.name == "postgresql" else "X'{}'"
    sql = PREVIOUS_SCHEMA.format(blob=blob, serial=serial,
                                 **{word: literal.format(word.encode().hex()) for word in ("body", "args", "result")})
    with engine.begin() as conn:
        for statement in sql.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    engine.dispose()


def schema_differences(url: str) -> list:
    """What autogenerate would change to make the database match the models (nothing, when in sync)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_head_is_the_newest_revision_script():
    config = migrations.alembic_config(None)
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_a_new_store_is_made_from_the_models_at_head(store_url):
    store = Store(store_url)
    assert store.revisions == (None, HEAD)
    store.close()
    assert schema_differences(store_url) == []


def test_replaying_every_revision_gives_the_models_schema(store_url):
    from alembic import command

    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), "head")
    engine.dispose()
    assert schema_differences(store_url) == []


def test_a_store_made_before_migrations_is_stamped_then_upgraded_with_its_rows(store_url):
    make_previous_store(store_url)
    store = Store(store_url)
    try:
        assert store.revisions == (LEGACY, HEAD)
        assert store.counts_by_state() == {"pending": 1, "dispatched": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
        (done,) = store.final_results(group_id="g")
        assert (done["id"], done["state"], done["result"]) == ("a", State.SUCCEEDED, b"result")
        assert done["output"] == []  # 0005: invocations recorded before it have no output
        (open_,) = store.unfinished()
        assert (open_["id"], open_["args"], open_["history"]) == ("b", b"args", "lost with its worker\n")
        assert store.function_bodies(["f"]) == {"f": b"body"}
        assert store.functions()["f"]["batch_size"] == 1  # 0003: functions before it were unbatched
        assert [(c["inits"], c["init_seconds"]) for c in store.context_summary()] == [(1, 0.5)]
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("invocations")}
        assert "ix_invocations_group_state" in indexes and "ix_invocations_group_id" not in indexes
    finally:
        store.close()
    assert schema_differences(store_url) == []
    again = Store(store_url)
    assert again.revisions == (HEAD, HEAD)
    again.close()


def test_concurrent_first_opens_create_one_store(store_url):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(Store, [store_url] * 4))
    assert Counter(s.revisions for s in stores) == {(None, HEAD): 1, (HEAD, HEAD): 3}
    with stores[0].engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
    for s in stores:
        s.close()


def test_a_store_from_a_newer_faas_is_refused_naming_both_revisions(store_url):
    Store(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(StoreUnavailable, match=f"revision 0099.*newer faas.*newest revision is {HEAD}"):
        Store(store_url)


def test_cli_upgrades_a_stopped_endpoints_store(faas_home):
    write_config(faas_home, "old", local_config())
    db = faas_home / "endpoints" / "old" / "store.db"
    make_previous_store(sqlite_url(db.parent))
    out = cli("upgrade", "old").stdout
    assert f"upgraded from revision {LEGACY} to {HEAD}" in out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        assert conn.execute("SELECT id, state FROM invocations ORDER BY id").fetchall() == [
            ("a", "succeeded"), ("b", "pending")]
    assert f"at revision {HEAD}, the newest" in cli("upgrade", "old").stdout
    assert '"succeeded": 1' in cli("status", "old", "--json").stdout


def test_read_only_commands_report_a_missing_store_and_create_none(faas_home):
    cli("configure", "bare")
    db = faas_home / "endpoints" / "bare" / "store.db"
    for command in (["status", "bare"], ["report", "bare"], ["upgrade", "bare"], ["purge", "bare"]):
        proc = cli(*command, check=False)
        assert proc.returncode != 0 and f"no store at {db}" in proc.stderr, (command, proc.stderr)
    assert not db.exists()


def test_check_identity_notices_a_deleted_or_replaced_store_file(tmp_path):
    store = Store(sqlite_url(tmp_path))
    db = tmp_path / "store.db"
    store.check_identity()
    os.rename(db, tmp_path / "moved.db")
    with pytest.raises(StoreUnavailable, match="replaced|missing"):
        store.check_identity()
    os.rename(tmp_path / "moved.db", db)
    store.check_identity()  # the same file back in place
    (tmp_path / "other").mkdir()
    Store(sqlite_url(tmp_path / "other")).close()
    os.replace(tmp_path / "other" / "store.db", db)
    with pytest.raises(StoreUnavailable, match=f"{db} was replaced"):
        store.check_identity()
    db.unlink()
    with pytest.raises(StoreUnavailable, match=f"{db} is missing"):
        store.check_identity()
    store.close()


def test_check_identity_passes_while_the_store_is_in_place(store_url):
    store = Store(store_url)
    store.check_identity()
    store.close()
