"""``faas.Executor``: a ``concurrent.futures.Executor`` for ctx_functions,
shaped like ``globus_compute_sdk.Executor``."""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from faas import protocol
from faas.client import serialize
from faas.client.connection import Connection
from faas.client.progress import track
from faas.client.transport import Transport, open_transport
from faas.errors import EndpointError, NotAuthorised, PayloadTooLarge
from faas.function import CtxFunction
from faas.home import EndpointDir

log = logging.getLogger(__name__)


class ComputeFuture(Future):
    """A future with the invocation's id (``task_id``, as in Globus Compute)."""

    def __init__(self, task_id: str):
        super().__init__()
        self.task_id = task_id


class Executor(_BaseExecutor):
    """Run ctx_functions on an endpoint.

    ``endpoint`` is an endpoint name (under ``$FAAS_HOME``), an ``ipc://``
    address, ``ssh://[user@]host[:port]/NAME`` (through an OpenSSH tunnel;
    options ``ssh_options``, ``remote_faas_home``, ``remote_python``,
    ``remote_command``: see :class:`faas.client.ssh.SSHTransport`),
    ``tcp://HOST:PORT`` (CurveZMQ; options ``server_key``, ``client_key``: see
    :class:`faas.client.transport.TcpTransport`), or None to start an embedded
    local endpoint that lives as long as this Executor. The constructor returns
    once the endpoint answers, or raises after ``connect_timeout`` seconds.
    All invocations belong to ``task_group_id`` (a new one by default).
    Arguments over ``max_payload_bytes`` (or the endpoint's smaller limit)
    raise PayloadTooLarge at submit.
    """

    def __init__(self, endpoint: str | None = None, task_group_id: str | None = None,
                 batch_size: int = 256, max_payload_bytes: int | None = 64 * 2**20,
                 embedded_workers: int = 2, connect_timeout: float = 30.0, **transport_options: Any):
        self.task_group_id = task_group_id or uuid.uuid4().hex
        self.batch_size = batch_size
        self.max_payload_bytes = max_payload_bytes
        self._embedded = None
        self._endpoint = endpoint
        if endpoint is None:
            from faas.client.embedded import EmbeddedEndpoint

            if transport_options:
                raise TypeError(f"{', '.join(sorted(transport_options))}: options of ssh:// and tcp:// only")
            self._embedded = EmbeddedEndpoint(workers=embedded_workers)
            transport = Transport(self._embedded.address)
        else:
            transport = open_transport(endpoint, **transport_options)
        self._transport = transport
        self._endpoint_limit: int | None = None  # the endpoint's max_payload_bytes, from its pong
        self._refused: NotAuthorised | None = None
        self._answered: Future = Future()  # the first pong
        self._lock = threading.Lock()
        self._futures: dict[str, ComputeFuture] = {}
        self._buffer: list[tuple[CtxFunction, str, str, bytes]] = []
        self._functions: dict[int, tuple[str, bytes, CtxFunction]] = {}  # id(fn) -> (fid, blob, fn)
        self._sent_fids: set[str] = set()
        self._unacked: dict[str, list[bytes]] = {}  # first invocation id -> submit message (IO thread)
        self._shutdown = False
        self._reload: Future | None = None
        self._conn = Connection(transport.address, self._on_message, self._flush, self._on_connect,
                                self._on_refused, transport.socket_options)
        self._finalizer = weakref.finalize(self, _close, self._conn, self._embedded, transport)
        self._await_endpoint(connect_timeout)

    def _await_endpoint(self, timeout: float) -> None:
        try:
            self._answered.result(timeout)
        except FutureTimeout:
            detail = f": {self._conn.last_failure}" if self._conn.last_failure else ""
            error = self._transport.unreachable(timeout, detail)
            self._finalizer()
            raise error from None
        except BaseException:
            self._finalizer()
            raise

    # -- submitting -----------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ComputeFuture:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        if self._refused is not None:
            raise self._refused
        limit = self._payload_limit()
        fid, fn_blob = self._function(fn)
        if limit is not None and len(fn_blob) > limit:
            raise PayloadTooLarge(f"function {fn.__qualname__} pickles to {len(fn_blob)} bytes, "
                                  f"over the limit of {limit} bytes")
        blob = serialize.args_blob(args, kwargs, limit)
        fut = ComputeFuture(uuid.uuid4().hex)
        with self._lock:
            self._futures[fut.task_id] = fut
            self._buffer.append((fn, fid, fut.task_id, blob))
            first = len(self._buffer) == 1
        if first:
            self._conn.wake()
        return fut

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, progress: bool | None = None) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``; submissions travel in chunks
        of ``batch_size`` whatever ``chunksize`` says. ``progress`` shows a bar of
        completed invocations (None: only when stderr is a terminal)."""
        futures = [self.submit(fn, *args) for args in zip(*iterables)]
        track(futures, progress, desc=getattr(fn, "__qualname__", None))

        def results():
            try:
                for fut in futures:
                    yield fut.result(timeout)
            finally:
                for fut in futures:
                    fut.cancel()

        return results()

    @property
    def endpoint_dir(self) -> EndpointDir | None:
        """The endpoint's folder on this machine (config, log, default store) when it
        is embedded or given by name, else None; an embedded one is removed at shutdown."""
        if self._embedded is not None:
            return self._embedded.epdir
        return EndpointDir.of(self._endpoint) if "://" not in self._endpoint else None

    def _payload_limit(self) -> int | None:
        limits = [n for n in (self.max_payload_bytes, self._endpoint_limit) if n is not None]
        return min(limits, default=None)

    def _function(self, fn: Callable) -> tuple[str, bytes]:
        cached = self._functions.get(id(fn))
        if cached is None or cached[2] is not fn:
            fid, blob = serialize.function_blob(fn)
            cached = self._functions[id(fn)] = (fid, blob, fn)
        return cached[0], cached[1]

    def _flush(self) -> list[list[bytes]]:
        """Turn buffered submissions into submit messages (on the IO thread)."""
        with self._lock:
            buffered, self._buffer = self._buffer, []
        messages = []
        for start in range(0, len(buffered), self.batch_size):
            chunk = buffered[start:start + self.batch_size]
            functions, blobs = [], []
            for fn, fid, _, _ in chunk:
                if fid not in self._sent_fids:
                    self._sent_fids.add(fid)
                    functions.append({"id": fid, "name": fn.__qualname__, "context_key": fn.context_key,
                                      "context": fn.spec.description, "retries": fn.retries})
                    blobs.append(self._function(fn)[1])
            invocations = [{"id": inv_id, "function": fid} for _, fid, inv_id, _ in chunk]
            message = protocol.encode("submit", [*blobs, *(a for *_, a in chunk)],
                                      group=self.task_group_id, functions=functions, invocations=invocations)
            self._unacked[invocations[0]["id"]] = message
            messages.append(message)
        return messages

    def _on_connect(self) -> list[list[bytes]]:
        """After a (re)connection: learn the endpoint's limits (ping), watch our
        group again (results recorded meanwhile come back) and resend what was
        not acknowledged."""
        watch = protocol.encode("watch", group=self.task_group_id)
        return [protocol.encode("ping"), watch, *self._unacked.values()]

    def _on_refused(self, detail: str) -> None:
        self._refuse(self._transport.refused(detail))

    def _refuse(self, exc: NotAuthorised) -> None:
        """The endpoint will not take this client's key: fail everything, now and later."""
        self._refused = exc
        if not self._answered.done():
            self._answered.set_exception(exc)
        self._fail_all(exc)

    def reload_tasks(self, timeout: float | None = 60) -> list[ComputeFuture]:
        """Futures for every invocation of this task group, done or not (e.g.
        after the client that submitted them went away)."""
        waiter: Future = Future()
        with self._lock:
            if self._reload is not None:
                raise RuntimeError("reload_tasks is already running")
            self._reload = waiter
        try:
            self._conn.send(protocol.encode("watch", group=self.task_group_id))
            return waiter.result(timeout)
        finally:
            with self._lock:
                self._reload = None

    # -- results --------------------------------------------------------------
    def _on_message(self, header: dict, frames: list[bytes]) -> None:
        kind = header["type"]
        if kind == "pong":
            limit = header.get("max_payload_bytes")
            self._endpoint_limit = limit if isinstance(limit, int) else None
            if not self._answered.done():
                self._answered.set_result(None)
        elif kind == "ack":
            if header["ids"]:
                self._unacked.pop(header["ids"][0], None)
        elif kind == "tasks":
            self._on_tasks(header["ids"])
        elif kind == "results":
            for item, payload in zip(header["items"], frames):
                with self._lock:
                    fut = self._futures.pop(item["id"], None)
                if fut is None or fut.done():
                    continue
                if item["ok"]:
                    fut.set_result(serialize.load_result(payload))
                else:
                    fut.set_exception(serialize.remote_exception(payload, item.get("error")))
        elif kind == "error":
            self._on_error(header)

    def _on_tasks(self, ids: list[str]) -> None:
        with self._lock:
            waiter = self._reload
            if waiter is None or waiter.done():
                return  # the reply to an automatic re-watch
            futures = [self._futures.setdefault(i, ComputeFuture(i)) for i in ids]
        waiter.set_result(futures)

    def _on_error(self, header: dict) -> None:
        """A refused request: fail the invocations it names, or all of them."""
        if header.get("code") == "not_authorised":
            self._refuse(self._transport.refused("the key is no longer authorised"))
            return
        exc = EndpointError(header["message"])
        ids = header.get("ids")
        if not ids or not isinstance(ids, list):
            if not self._answered.done():
                self._answered.set_exception(exc)
            self._fail_all(exc)
            return
        for inv_id in ids:
            with self._lock:
                fut = self._futures.pop(inv_id, None) if isinstance(inv_id, str) else None
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        self._unacked.pop(ids[0], None)  # refused for good: resending cannot help

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(exc)

    # -- lifecycle --------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        with self._lock:
            futures = list(self._futures.values())
        if cancel_futures:
            for fut in futures:
                fut.cancel()
        elif wait:
            for fut in futures:
                try:
                    fut.exception()
                except Exception:  # cancelled
                    pass
        self._finalizer()


def _close(conn: Connection, embedded, transport: Transport) -> None:
    conn.close()
    transport.close()
    if embedded is not None:
        embedded.close()

