"""The durable record of every invocation: the endpoint's source of truth.

All writes of one batch go in one transaction. Only the endpoint daemon writes,
so "check which ids exist, insert the others" is race-free and gives idempotent
submission without dialect-specific upserts.
"""

from __future__ import annotations

import collections
import functools
import json
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Engine

from faas.errors import StoreUnavailable
from faas.store import migrations
from faas.store.models import Context, ContextFiles, ContextInit, Function, Invocation, Worker
from faas.store.states import FINAL, State, allowed_sources


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{Path(folder) / 'store.db'}"


def _make_engine(url: str, lock_wait: float) -> Engine:
    if not url.startswith("sqlite"):  # a server that is down is found out in seconds, not minutes
        args = {"connect_timeout": max(1, round(lock_wait))}
        if url.startswith("postgresql"):  # a lock held elsewhere fails a write after lock_wait, as SQLite's does
            args["options"] = f"-c lock_timeout={max(1, round(lock_wait * 1000))}"
        return create_engine(url, pool_pre_ping=True, connect_args=args)
    engine = create_engine(url, connect_args={"timeout": lock_wait})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers (CLI status) never block the daemon
        cur = dbapi_conn.cursor()
        deadline = time.monotonic() + lock_wait
        while True:  # while another connection creates the file, this pragma fails at once, unretried by SQLite
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


@dataclass
class Outcome:
    """The final state of one invocation, as recorded."""

    id: str
    state: State  # one of FINAL
    payload: bytes | None  # pickled result or pickled exception
    error: str | None  # traceback text when not ok
    worker_id: str
    started_at: float
    finished_at: float
    output: list | None = None  # what it wrote: [(stream, text), ...]


class Store:
    def __init__(self, url: str, lock_wait: float = 30.0):
        """``lock_wait``: seconds a write waits for a lock another process holds
        (SQLite's write lock, a PostgreSQL row or table lock) before it fails; the
        daemon waits briefly and retries later."""
        self.url = url
        self.engine = _make_engine(url, lock_wait)
        self.revisions = migrations.upgrade(self.engine)  # (revision it had, revision it has now)
        self.max_value_bytes = _value_limit(self.engine)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).chmod(0o600)
        self._file = self._file_identity()
        self._workers: set[str] = set()  # worker rows known to exist (only the daemon writes them)
        self.purged = 0  # invocations this Store deleted (the dashboard's counts are recounted after a purge)

    def _file_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of a SQLite store's file; None for a server database or an in-memory one."""
        path = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:":
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise StoreUnavailable(f"the store {path} is missing: it was deleted or moved") from None
        return st.st_dev, st.st_ino

    def check_identity(self) -> None:
        """Raise StoreUnavailable when the SQLite file this store opened was deleted or replaced.

        A connection keeps the file it opened, even once unlinked, while a new connection
        opens whatever is at the path now (or creates an empty store): without this check
        a daemon would split its records between a deleted file and a new one."""
        if self._file is not None and self._file_identity() != self._file:
            raise StoreUnavailable(f"the store {self.engine.url.database} was replaced by another file "
                                   f"while in use: restart the endpoint")

    def close(self) -> None:
        self.engine.dispose()

    # -- writes -----------------------------------------------------------
    def add_function(self, fid: str, name: str, context_key: str, context_description: str,
                     retries: int, body: bytes, batch_size: int = 1) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            if conn.scalar(select(Context.key).where(Context.key == context_key)) is None:
                conn.execute(insert(Context).values(key=context_key, description=context_description,
                                                    created_at=now))
            if conn.scalar(select(Function.id).where(Function.id == fid)) is None:
                conn.execute(insert(Function).values(id=fid, name=name, context_key=context_key,
                                                     retries=retries, batch_size=batch_size, body=body,
                                                     created_at=now))

    def add_invocations(self, rows: Sequence[dict]) -> set[str]:
        """Record new invocations as pending; returns the ids that were new.

        Each row has id, group_id, function_id, context_key, args. An id already
        recorded (a resend after a reconnect) is left untouched.
        """
        if not rows:
            return set()
        ids = [r["id"] for r in rows]
        now = time.time()
        with self.engine.begin() as conn:
            known = set()
            for chunk in _chunks(ids, IN_LIST):
                known.update(i for i, _ in _states_of(conn, chunk))
            fresh = [dict(r, state=State.PENDING.value, attempts=0, submitted_at=now)
                     for r in rows if r["id"] not in known]
            if fresh:
                _executemany(conn, _insert_invocations(tuple(fresh[0])), fresh)
        return {r["id"] for r in fresh}

    def mark_dispatched(self, ids: Sequence[str]) -> None:
        with self.engine.begin() as conn:
            _mark_dispatched(conn, ids)

    def requeue(self, notes: dict[str, str], refund: Iterable[str] = ()) -> None:
        """Back to pending; each invocation's note (why the attempt ended) is
        appended to its history. ``refund``: ids whose attempt did not count
        (taken back from a worker before they started)."""
        with self.engine.begin() as conn:
            _requeue(conn, notes, set(refund))

    def probe_write(self) -> None:
        """A write that changes nothing: it fails while another process holds
        SQLite's write lock or the server is down (a full disk shows only on real writes)."""
        with self.engine.begin() as conn:
            conn.execute(update(Worker).where(Worker.id.is_(None)).values(last_seen=Worker.last_seen))

    def purge(self, older_than: float) -> int:
        """Delete final invocations that finished more than ``older_than`` seconds ago."""
        cutoff = time.time() - older_than
        with self.engine.begin() as conn:
            n = conn.execute(delete(Invocation).where(Invocation.state.in_(FINAL),
                                                      Invocation.finished_at < cutoff)).rowcount
        self.purged += n
        return n

    def record_outcomes(self, outcomes: Sequence[Outcome], workers: Iterable[tuple[str, str, int]] = (),
                        inits: Iterable[dict] = (), requeue: dict[str, str] | None = None,
                        refund: Iterable[str] = (), lost_workers: Iterable[tuple[str, float]] = (),
                        dispatched: Sequence[str] = (),
                        file_bytes: dict[tuple[str, str], tuple[int, int]] | None = None) -> set[str]:
        """Record invocations shipped to workers (see :meth:`mark_dispatched`),
        final outcomes, the workers that produced them, context inits,
        invocations going back to the queue (see :meth:`requeue`), when
        workers were lost and the bytes of context files they copied
        (``file_bytes``: (worker, context) -> (from the source, from peers),
        cumulative), in one transaction: a failed write leaves nothing
        half-recorded, and is simply tried again. Returns the ids whose outcome
        was newly recorded (a late duplicate of a final invocation is ignored).

        A lost worker's span in the report's timeline ends at ``lost_at`` instead
        of at its last result; a worker that never reported has no row to end."""
        now = time.time()
        # shipped and finished since the last write (short calls): one UPDATE for both, not two
        once = collections.Counter(dispatched)
        folded = {o.id for o in outcomes if once[o.id] == 1} - set(requeue or ())
        with self.engine.begin() as conn:
            _mark_dispatched(conn, [i for i in dispatched if i not in folded])  # first: one may have finished since
            if requeue:
                _requeue(conn, requeue, set(refund))
            workers = {w[0]: w for w in workers}
            new_workers = [w for w in workers if w not in self._workers]
            for chunk in _chunks(new_workers, 500):  # once per worker: a fleet reports hundreds per transaction
                self._workers.update(conn.scalars(select(Worker.id).where(Worker.id.in_(chunk))))
            known = [{"b_id": w} for w in workers if w in self._workers]
            if known:
                _executemany(conn, _worker_seen(), [dict(k, seen=now) for k in known])
            new = [dict(id=wid, host=host, pid=pid, first_seen=now, last_seen=now)
                   for wid, host, pid in workers.values() if wid not in self._workers]
            if new:
                conn.execute(insert(Worker), new)
            for wid, at in lost_workers:
                conn.execute(update(Worker).where(Worker.id == wid).values(lost_at=at))
            if file_bytes:
                _record_file_bytes(conn, file_bytes, now)
            inits = [dict(i) for i in inits]
            if inits:
                # a function may use other contexts (a ctx_function calling another): record them too
                known = set(conn.scalars(select(Context.key).where(
                    Context.key.in_({i["context_key"] for i in inits}))))
                for key, desc in {i["context_key"]: i.pop("description") for i in inits}.items():
                    if key not in known:
                        conn.execute(insert(Context).values(key=key, description=desc, created_at=now))
                conn.execute(insert(ContextInit), inits)
            recorded: set[str] = set()
            for target in FINAL:
                rows = [o for o in outcomes if o.state is target]
                if not rows:
                    continue
                open_ids, sources = set(), allowed_sources(target)
                for chunk in _chunks([o.id for o in rows], IN_LIST):  # by id alone: SQLite would scan
                    open_ids.update(i for i, state in _states_of(conn, chunk)  # the state index for a long
                                    if state in sources)  # IN (...)
                params = {False: [], True: []}
                for o in rows:
                    if o.id in open_ids:
                        params[o.id in folded].append(dict(b_id=o.id, result=o.payload, error=o.error, at=now,
                                                           worker_id=o.worker_id, started_at=o.started_at,
                                                           finished_at=o.finished_at,
                                                           output=json.dumps(o.output) if o.output else None))
                for shipped, batch in params.items():
                    if batch:
                        _executemany(conn, _finish(target, shipped), batch)
                recorded |= open_ids
        return recorded

    # -- reads ------------------------------------------------------------
    def function_bodies(self, fids: Iterable[str]) -> dict[str, bytes]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Function.id, Function.body).where(Function.id.in_(list(fids)))).all())

    def functions(self) -> dict[str, dict]:
        """Each function's record (its body aside), with its context's description as ``context``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Function.id, Function.name, Function.context_key, Function.retries,
                                       Function.batch_size, Context.description.label("context"))
                                .join(Context, Context.key == Function.context_key))
            return {r.id: r._asdict() for r in rows}

    def unfinished(self) -> list[dict]:
        """Invocations not in a final state, oldest first (for recovery)."""
        cols = (Invocation.id, Invocation.group_id, Invocation.function_id, Invocation.context_key,
                Invocation.args, Invocation.attempts, Invocation.state, Invocation.history)
        with self.engine.connect() as conn:
            rows = conn.execute(select(*cols).where(Invocation.state.not_in(FINAL))
                                .order_by(Invocation.submitted_at))
            return [r._asdict() for r in rows]

    def final_results(self, ids: Sequence[str] | None = None, group_id: str | None = None) -> list[dict]:
        """Final invocations (by id or group) with their payloads, output and worker, to send to clients."""
        q = select(Invocation.id, Invocation.group_id, Invocation.state, Invocation.result,
                   Invocation.error, Invocation.output, Invocation.worker_id).where(Invocation.state.in_(FINAL))
        with self.engine.connect() as conn:
            if group_id is not None:
                rows = list(conn.execute(q.where(Invocation.group_id == group_id)))
            else:
                rows = [r for chunk in _chunks(list(ids or ()), 500)
                        for r in conn.execute(q.where(Invocation.id.in_(chunk)))]
        return [dict(r._asdict(), output=output_of(r.output)) for r in rows]

    def known(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` the store has a record of."""
        with self.engine.connect() as conn:
            return {i for chunk in _chunks(list(ids), IN_LIST) for i, _ in _states_of(conn, chunk)}

    def invocation(self, inv_id: str) -> dict | None:
        """One invocation's record, its payloads left out, with its function's name and
        context's description: a lookup by primary key, whatever the store's size."""
        q = (select(Invocation.id, Invocation.group_id, Invocation.state, Invocation.attempts, Invocation.worker_id,
                    Invocation.submitted_at, Invocation.dispatched_at, Invocation.started_at,
                    Invocation.finished_at, Invocation.error, Invocation.history,
                    Function.name.label("function"), Context.description.label("context"))
             .join(Function, Function.id == Invocation.function_id)
             .join(Context, Context.key == Invocation.context_key).where(Invocation.id == inv_id))
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else dict(row._asdict(), state=row.state.value)

    def group_ids(self, group_id: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(Invocation.id).where(Invocation.group_id == group_id)
                                     .order_by(Invocation.submitted_at)))

    def counts_by_state(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Invocation.state, func.count()).group_by(Invocation.state))
            counts = {s.value: 0 for s in State}
            counts.update({state.value: n for state, n in rows})
            return counts

    def context_summary(self) -> list[dict]:
        """Per context: description, inits (ok and failed), init seconds, invocations by state."""
        with self.engine.connect() as conn:
            out = {k: dict(key=k, description=d, inits=0, init_failures=0, init_seconds=0.0, invocations={})
                   for k, d in conn.execute(select(Context.key, Context.description))}
            for k, err, n, secs in conn.execute(
                    select(ContextInit.context_key, ContextInit.error.is_not(None), func.count(),
                           func.sum(ContextInit.seconds)).group_by(ContextInit.context_key,
                                                                    ContextInit.error.is_not(None))):
                out[k]["init_failures" if err else "inits"] += n
                out[k]["init_seconds"] += secs or 0.0
            for k, state, n in conn.execute(select(Invocation.context_key, Invocation.state, func.count())
                                            .group_by(Invocation.context_key, Invocation.state)):
                out[k]["invocations"][state.value] = n
            return list(out.values())

    def workers(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(select(Worker.__table__).order_by(Worker.first_seen))]


def output_of(text: str | None) -> list[tuple[str, str]]:
    """An invocation's recorded output (its ``output`` column) as [(stream, text), ...]."""
    return [tuple(chunk) for chunk in json.loads(text)] if text else []


IN_LIST = 512  # ids per IN (...) of the hot reads


def _value_limit(engine: Engine) -> int:
    """The largest value the database takes: SQLite's length limit (10**9 bytes
    unless compiled otherwise; it bounds a whole row too), PostgreSQL's 1 GB per field."""
    if engine.url.get_backend_name() == "sqlite":
        with engine.connect() as conn:
            return conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    return 2**30 - 1


# The hot statements, built once: building an UPDATE cost more than running it for a few rows.
# One row per id (executemany on ``id = ?``): with ``id IN (...)`` SQLite chose the
# state index and scanned every pending invocation. They run through _executemany.
def _from(target: State):
    return or_(*(Invocation.state == src for src in allowed_sources(target)))


@functools.cache
def _dispatch_mark():
    return (update(Invocation).where(Invocation.id == bindparam("b_id"), _from(State.DISPATCHED))
            .values(state=State.DISPATCHED, dispatched_at=bindparam("at"), attempts=Invocation.attempts + 1)
            .execution_options(synchronize_session=False))


@functools.cache
def _finish(target: State, shipped: bool = False):
    """``shipped``: its dispatch mark was not written yet, and is written with it."""
    marks = dict(dispatched_at=bindparam("at"), attempts=Invocation.attempts + 1) if shipped else {}
    return (update(Invocation).where(Invocation.id == bindparam("b_id"))
            .values(state=target, result=bindparam("result"), error=bindparam("error"),
                    worker_id=bindparam("worker_id"), started_at=bindparam("started_at"),
                    finished_at=bindparam("finished_at"), output=bindparam("output"), **marks)
            .execution_options(synchronize_session=False))


@functools.cache
def _insert_invocations(columns: tuple[str, ...]):
    return insert(Invocation).values({c: bindparam(c) for c in columns})


def _executemany(conn, stmt, rows: list[dict]) -> None:
    """``stmt`` for each of ``rows`` (plain values: a state as its string), compiled
    once per kind of driver and handed to the driver's executemany: SQLAlchemy's
    per-row bind processing cost three to four times SQLite's own work on these
    rows (25-50 against 7-11 us per invocation), most of the daemon's time per result."""
    sql, params = _compiled(stmt, conn.dialect)
    conn.exec_driver_sql(sql, [params(r) for r in rows])


# Compiled per kind of driver, not per engine (a process may open many stores):
# (statement, dialect, driver, paramstyle) -> (SQL, what makes a row the driver's parameters)
_COMPILED: dict[tuple, tuple[str, Callable[[dict], tuple | dict]]] = {}


def _compiled(stmt, dialect) -> tuple[str, Callable[[dict], tuple | dict]]:
    """(SQL, what turns a row into the driver's parameters: positional or named,
    with the values the statement fixes itself, such as the states an UPDATE moves from)."""
    key = (stmt, dialect.name, dialect.driver, dialect.paramstyle)
    if key not in _COMPILED:
        c = stmt.compile(dialect=dialect)
        fixed = {k: v.value if isinstance(v, State) else v for k, v in c.params.items()}
        _COMPILED[key] = (c.string, _parameters(fixed, tuple(c.positiontup) if dialect.positional else None))
    return _COMPILED[key]


def _parameters(fixed: dict, names: tuple[str, ...] | None) -> Callable[[dict], tuple | dict]:
    """What turns a row into the driver's parameters: the statement's fixed values
    overlaid with the row's, as they are for a named driver, else in ``names``' order."""
    if names is None:
        return fixed.__or__
    get = operator.itemgetter(*names)  # a bare value, not a tuple, for a single name
    return (lambda row: get(fixed | row)) if len(names) > 1 else (lambda row: (get(fixed | row),))


@functools.cache
def _id_list(size: int):
    return select(Invocation.id, Invocation.state).where(Invocation.id.in_([bindparam(f"id{n}") for n in range(size)]))


def _states_of(conn, ids: Sequence[str]):
    """(id, state as its string) of those of ``ids`` (at most IN_LIST) on record.
    The IN list is padded to a power of two, so that a few statements, compiled
    once, serve every length."""
    size = 1 << max(0, len(ids) - 1).bit_length()
    padded = [*ids, *ids[-1:] * (size - len(ids))]
    sql, params = _compiled(_id_list(size), conn.dialect)
    return conn.exec_driver_sql(sql, params({f"id{n}": i for n, i in enumerate(padded)}))


@functools.cache
def _worker_seen():
    return (update(Worker).where(Worker.id == bindparam("b_id")).values(last_seen=bindparam("seen"))
            .execution_options(synchronize_session=False))


def _mark_dispatched(conn, ids: Sequence[str]) -> None:
    if ids:
        at = time.time()
        _executemany(conn, _dispatch_mark(), [{"b_id": i, "at": at} for i in ids])


@functools.cache
def _back_to_queue(refunded: bool):
    """``refunded``: the attempt did not count. No IN (...): executemany cannot expand it."""
    return (update(Invocation).where(Invocation.id == bindparam("b_id"), _from(State.PENDING))
            .values(state=State.PENDING, attempts=Invocation.attempts - 1 if refunded else Invocation.attempts,
                    history=func.coalesce(Invocation.history, "") + bindparam("note"))
            .execution_options(synchronize_session=False))


def _requeue(conn, notes: dict[str, str], refund: set[str]) -> None:
    for ids, refunded in ((notes.keys() - refund, False), (notes.keys() & refund, True)):
        if ids:
            conn.execute(_back_to_queue(refunded), [{"b_id": i, "note": notes[i] + "\n"} for i in ids])


def _record_file_bytes(conn, counts: dict[tuple[str, str], tuple[int, int]], now: float) -> None:
    rows = [dict(worker_id=w, context_key=k, source_bytes=s, peer_bytes=p, updated_at=now)
            for (w, k), (s, p) in counts.items()]
    known = set()
    for chunk in _chunks(sorted({w for w, _ in counts}), 500):
        known.update((w, k) for w, k in conn.execute(select(ContextFiles.worker_id, ContextFiles.context_key)
                                                     .where(ContextFiles.worker_id.in_(chunk))))
    fresh = [r for r in rows if (r["worker_id"], r["context_key"]) not in known]
    if fresh:
        conn.execute(insert(ContextFiles), fresh)
    seen = [dict(b_w=r["worker_id"], b_k=r["context_key"], s=r["source_bytes"], p=r["peer_bytes"], at=now)
            for r in rows if (r["worker_id"], r["context_key"]) in known]
    if seen:
        conn.execute(update(ContextFiles).where(ContextFiles.worker_id == bindparam("b_w"),
                                                ContextFiles.context_key == bindparam("b_k"))
                     .values(source_bytes=bindparam("s"), peer_bytes=bindparam("p"), updated_at=bindparam("at")),
                     seen)


def _chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
