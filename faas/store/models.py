"""SQLAlchemy 2.x tables of the store.

Payloads (pickled functions, arguments, results) are opaque bytes here: the
store, like the daemon, never unpickles them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Enum, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from faas.store.states import State


class Base(DeclarativeBase):
    pass

class Function(Base):
    __tablename__ = "functions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of body
    name: Mapped[str] = mapped_column(String(256))
    context_key: Mapped[str] = mapped_column(String(64), ForeignKey("contexts.key"))
    retries: Mapped[int] = mapped_column(Integer, default=0)
    batch_size: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # invocations per merged call
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)

class Context(Base):
    __tablename__ = "contexts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)

class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)  # host:pid
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    lost_at: Mapped[float | None] = mapped_column(Float, nullable=True)

class ContextInit(Base):
    """One initialisation of a context in one worker process (ok or failed)."""

    __tablename__ = "context_inits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    context_key: Mapped[str] = mapped_column(String(64), ForeignKey("contexts.key"), index=True)
    worker_id: Mapped[str] = mapped_column(String(256), ForeignKey("workers.id"))
    started_at: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

class ContextFiles(Base):
    """Bytes of a context's files one worker process copied into its node cache,
    from the source and from peers (cumulative counters, as the worker last reported)."""

    __tablename__ = "context_files"

    worker_id: Mapped[str] = mapped_column(String(256), ForeignKey("workers.id"), primary_key=True)
    context_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    peer_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[float] = mapped_column(Float)

class Invocation(Base):
    __tablename__ = "invocations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # made by the client
    group_id: Mapped[str] = mapped_column(String(64))
    function_id: Mapped[str] = mapped_column(String(64), ForeignKey("functions.id"))
    context_key: Mapped[str] = mapped_column(String(64), ForeignKey("contexts.key"))
    state: Mapped[State] = mapped_column(
        Enum(State, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    submitted_at: Mapped[float] = mapped_column(Float)
    dispatched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    args: Mapped[bytes] = mapped_column(LargeBinary)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # remote traceback text
    history: Mapped[str | None] = mapped_column(Text, nullable=True)  # one line per failed attempt

    # (group_id, state): a reattaching client's final results by group; its first column serves lookups by group
    __table_args__ = (Index("ix_invocations_state", "state"), Index("ix_invocations_finished", "finished_at"),
                      Index("ix_invocations_group_state", "group_id", "state"))
