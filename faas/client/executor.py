"""``faas.Executor``: a ``concurrent.futures.Executor`` for ctx_functions (and plain functions),
shaped like ``globus_compute_sdk.Executor``."""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from faas import protocol
from faas.client import exit_wait, output, serialize
from faas.client.base import ComputeFuture, FaasExecutor, fail, resolve_call
from faas.client.connection import Connection
from faas.client.transport import Transport, open_transport
from faas.errors import EndpointError, InvocationLost, PayloadTooLarge, StoreUnavailable
from faas.function import CtxFunction
from faas.home import EndpointDir

log = logging.getLogger(__name__)


class Executor(FaasExecutor):
    """Run functions on an endpoint: ctx_functions in their warm contexts, and
    plain callables without one.

    ``endpoint`` is an endpoint name (under ``$FAAS_HOME``), an ``ipc://``
    address, ``ssh://[user@]host[:port]/NAME`` (through an OpenSSH tunnel;
    options ``ssh_options``, ``remote_faas_home``, ``remote_python``,
    ``remote_command``: see :class:`faas.client.ssh.SSHTransport`),
    ``tcp://HOST:PORT`` (CurveZMQ; options ``server_key``, ``client_key``: see
    :class:`faas.client.transport.TcpTransport`), or None to start an embedded
    local endpoint that lives as long as this Executor, with
    ``embedded_workers`` workers (default: one per GPU of this node, else up
    to four CPU workers; see ``faas-endpoint configure``). The constructor returns once the endpoint answers, or
    raises after ``connect_timeout`` seconds. All invocations belong to
    ``task_group_id`` (a new one by default). Arguments over
    ``max_payload_bytes`` (or the endpoint's smaller limit) raise
    PayloadTooLarge at submit. Futures go RUNNING when their invocation starts
    on a worker; ``cancel()`` before that cancels it on the endpoint. What an
    invocation writes to stdout and stderr (and logs) is printed here as its
    result arrives, each line prefixed with its worker, unless
    ``forward_output`` is False (it is kept on the future and in the store
    either way). At interpreter exit the wait for pending work gives up after
    ``exit_timeout`` seconds without progress (see :mod:`faas.client.exit_wait`).
    """

    def __init__(self, endpoint: str | None = None, task_group_id: str | None = None,
                 batch_size: int = 256, max_payload_bytes: int | None = 64 * 2**20,
                 embedded_workers: int | None = None, connect_timeout: float = 30.0, forward_output: bool = True,
                 exit_timeout: float = exit_wait.EXIT_TIMEOUT, **transport_options: Any):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        if embedded_workers is not None and (not isinstance(embedded_workers, int) or embedded_workers < 1):
            raise ValueError(f"embedded_workers must be a positive int or None, not {embedded_workers!r}")
        super().__init__(exit_timeout)
        self.forward_output = forward_output
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
        self._message_limit: int | None = None  # its max_message_bytes: submissions are split to fit
        self._answered: Future = Future()  # the first pong
        self._buffer: list[tuple[CtxFunction, str, bytes, ComputeFuture, bytes]] = []  # fn, id, body, future, args
        self._cancels: list[str] = []
        self._sent_fids: set[str] = set()  # bodies acknowledged by the endpoint (since the last connection)
        self._unacked: dict[str, tuple[list, list[str]]] = {}  # first id -> (a submit's entries, fids it carried)
        self._heard = 0  # messages from the endpoint: while invocations run, its answers are progress at exit
        self._reload: Future | None = None
        self._closer: threading.Thread | None = None
        self._conn = Connection(transport.address, self._on_message, self._flush, self._on_connect,
                                self._on_refused, transport.socket_options, on_fatal=self._break)
        transport.on_fatal = self._break
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
        self._check_open()
        fn, args, kwargs = resolve_call(fn, args, kwargs)
        limit = self._payload_limit()
        ctx_fn, fid, fn_blob = self._function(fn)
        if limit is not None and len(fn_blob) > limit:
            raise PayloadTooLarge(f"function {ctx_fn.__qualname__} pickles to {len(fn_blob)} bytes, "
                                  f"over the limit of {limit} bytes")
        blob = serialize.args_blob(args, kwargs, limit)
        fut = ComputeFuture(self._new_id(), _weak_call(self._cancel))
        with self._lock:
            if self._broken is not None:  # broke since _check_open: this future would never end
                raise self._broken
            self._futures[fut.task_id] = fut
            self._buffer.append((ctx_fn, fid, fn_blob, fut, blob))
            first = len(self._buffer) == 1
        if first:
            self._conn.wake()
        return fut

    def _cancel(self, task_id: str) -> None:
        with self._lock:
            fut = self._futures.get(task_id)
            if fut is not None and fut.cancelled():
                del self._futures[task_id]  # a running one stays, to hear how it ended
            self._cancels.append(task_id)
        self._conn.wake()

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

    def _flush(self) -> list[list[bytes]]:
        """Turn buffered submissions and cancellations into messages (on the IO thread)."""
        with self._lock:
            buffered, self._buffer = self._buffer, []
            cancels, self._cancels = self._cancels, []
        buffered = [b for b in buffered if not b[3].cancelled()]  # cancelled before it left: never sent
        messages = []
        for chunk in self._chunks(buffered):
            functions, blobs, fresh = [], [], set()
            for fn, fid, body, _, _ in chunk:
                if fid not in self._sent_fids and fid not in fresh:
                    fresh.add(fid)
                    functions.append(protocol.FunctionInfo(
                        id=fid, name=fn.__qualname__[:256], context_key=fn.context_key,
                        context=fn.context_description, retries=fn.retries, batch_size=fn.batch_size))
                    blobs.append(body)
            invocations = [protocol.InvocationRef(id=fut.task_id, function=fid) for _, fid, _, fut, _ in chunk]
            message = protocol.encode(protocol.Submit(group=self.task_group_id, functions=functions,
                                                      invocations=invocations),
                                      [*blobs, *(a for *_, a in chunk)])
            with self._lock:  # the wait at exit reads it from another thread
                self._unacked[invocations[0].id] = (chunk, sorted(fresh))
            messages.append(message)
        if cancels:
            messages.append(protocol.encode(protocol.Cancel(ids=cancels)))
        return messages

    def _chunks(self, buffered: list) -> list[list]:
        """At most ``batch_size`` invocations per submit, and within the
        endpoint's max_message_bytes (estimated: bodies, arguments, headers)."""
        room = None if self._message_limit is None else self._message_limit - 65536
        chunks: list[list] = []
        size, fids = 0, set()

        def cost(entry) -> int:  # its arguments, and its function's body when the chunk does not carry it yet
            fn, fid, body, _, args = entry
            new = fid not in fids and fid not in self._sent_fids
            return len(args) + 256 + (len(body) + len(fn.context_description) + 512 if new else 0)

        for entry in buffered:
            if not chunks or len(chunks[-1]) == self.batch_size or room is not None and size + cost(entry) > room:
                chunks.append([])
                size, fids = 0, set()
            size += cost(entry)
            chunks[-1].append(entry)
            fids.add(entry[1])
        return chunks

    def _on_connect(self) -> list[list[bytes]]:
        """After a (re)connection: learn the endpoint's limits (ping), watch our
        group again, naming the acknowledged invocations we wait for (results
        recorded meanwhile come back; the endpoint says which it has no record
        of), and submit again what was not acknowledged, with the bodies of its
        functions: an endpoint restarted on a new store knows none of them."""
        with self._lock:
            self._buffer[:0] = [entry for entries, _ in self._unacked.values() for entry in entries]
            self._unacked.clear()
            self._sent_fids.clear()
            unacked = self._unacked_ids()
            waiting = [i for i in self._futures if i not in unacked]
        watch = protocol.encode(protocol.Watch(group=self.task_group_id, ids=waiting))
        return [protocol.encode(protocol.Ping()), watch]  # the resubmissions follow (_flush)

    def _unacked_ids(self) -> set[str]:
        """Invocations not acknowledged yet: buffered, or sent and unanswered (the caller holds the lock)."""
        return {e[3].task_id for entries, _ in self._unacked.values() for e in entries} | \
            {b[3].task_id for b in self._buffer}

    def _on_refused(self, detail: str) -> None:
        self._break(self._transport.refused(detail))

    def _break(self, error: BaseException) -> None:
        """This client cannot go on (its key refused, a thread failed, the endpoint
        stopped for good): fail everything, now and later; a constructor or a
        reload_tasks waiting for an answer gets the error too."""
        with self._lock:
            self._buffer, self._cancels = [], []
            self._unacked.clear()  # their futures fail: resending them would run work nobody waits for
            waiters = [self._answered, self._reload]
        super()._break(error)
        fail([w for w in waiters if w is not None], error)

    def reload_tasks(self, timeout: float | None = 60) -> list[ComputeFuture]:
        """Futures for every invocation of this task group, done or not (e.g.
        after the client that submitted them went away)."""
        waiter: Future = Future()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._reload is not None:
                raise RuntimeError("reload_tasks is already running")
            self._reload = waiter
        try:
            self._conn.send(protocol.encode(protocol.Watch(group=self.task_group_id)))
            return waiter.result(timeout)
        finally:
            with self._lock:
                self._reload = None

    # -- from the endpoint (on the IO thread) ------------------------------------
    def _on_message(self, msg: Any, frames: list[bytes]) -> None:
        self._heard += 1
        if isinstance(msg, protocol.Results):
            self._on_results(msg.items, frames)
        elif isinstance(msg, protocol.Running):
            with self._lock:
                futures = [self._futures.get(i) for i in msg.ids]
            for fut in futures:
                if fut is not None and not fut.running() and not fut.done():
                    fut.set_running_or_notify_cancel()
        elif isinstance(msg, protocol.Ack):
            with self._lock:  # an ack of a message sent before a reconnect may name another set
                entries, fids = self._unacked.get(msg.ids[0], ([], [])) if msg.ids else ([], [])
                if entries and len(entries) == len(msg.ids):
                    del self._unacked[msg.ids[0]]
                    self._sent_fids.update(fids)  # only now: a refused submit sends its bodies again
        elif isinstance(msg, protocol.Pong):
            self._endpoint_limit = msg.max_payload_bytes
            self._message_limit = msg.max_message_bytes
            if not self._answered.done():
                self._answered.set_result(None)
        elif isinstance(msg, protocol.Tasks):
            self._on_tasks(msg.ids)
        elif isinstance(msg, protocol.Error):
            self._on_error(msg)

    def _on_results(self, items: list[protocol.ResultItem], payloads: list[bytes]) -> None:
        """Each item on its own: one result that cannot be loaded here fails its
        own future, never the others."""
        for item, payload in zip(items, payloads):
            with self._lock:
                fut = self._futures.pop(item.id, None)
            if fut is None or fut.done():
                continue
            fut.output, fut.worker = [tuple(chunk) for chunk in item.output], item.worker
            if self.forward_output and item.output:
                output.forward(item.worker, item.output)
            if item.state == "cancelled":
                if not fut.cancel():  # running: it was cancelled by someone else
                    fut.set_exception(CancelledError(f"invocation {item.id} was cancelled on the endpoint"))
                continue
            if item.state == "succeeded":
                try:
                    value = serialize.load_result(payload)
                except Exception as e:
                    fut.set_exception(serialize.unloadable(payload, e))
                    continue
                fut.set_result(value)
            else:
                fut.set_exception(serialize.remote_exception(payload, item.error))

    def _on_tasks(self, ids: list[str]) -> None:
        with self._lock:
            waiter = self._reload
            if waiter is None or waiter.done():
                return  # the reply to an automatic re-watch
            futures = [self._futures.setdefault(i, ComputeFuture(i, _weak_call(self._cancel))) for i in ids]
        waiter.set_result(futures)

    def _on_error(self, msg: protocol.Error) -> None:
        """A refused request: fail the invocations it names, or all of them."""
        if msg.code == "not_authorised":
            self._break(self._transport.refused("the key is no longer authorised"))
            return
        if msg.code == "stopped":  # the endpoint stopped for good: nothing more will come
            self._break(EndpointError(msg.message))
            return
        if msg.code == "reload":  # it dropped replies while this client was not reading: ask again
            log.warning("the endpoint dropped replies to this client; reloading")
            for message in self._on_connect():
                self._conn.send(message)
            return
        exc = {"store_unavailable": StoreUnavailable,  # the store could not record the request or the outcome
               "too_large": PayloadTooLarge,
               "lost": InvocationLost}.get(msg.code, EndpointError)(msg.message)  # its store has no record of them
        if not msg.ids:
            fail([self._answered], exc)
            with self._lock:
                futures, self._futures = list(self._futures.values()), {}
            fail(futures, exc)
            return
        with self._lock:
            futures = [f for f in (self._futures.pop(i, None) for i in msg.ids) if f is not None]
        fail(futures, exc)
        with self._lock:
            self._unacked.pop(msg.ids[0], None)  # refused for good: resending cannot help

    # -- the wait at interpreter exit (faas.client.exit_wait) ----------------------------
    def _progress(self) -> Any:
        """Acknowledgements and results change it; while an invocation runs, so does any answer
        from the endpoint (:meth:`_keepalive` asks for one), so a long run is not taken for a stall."""
        with self._lock:
            unacked = len(self._buffer) + sum(len(entries) for entries, _ in self._unacked.values())
            futures = list(self._futures.values())
        running = sum(f.running() for f in futures)
        return unacked, len(futures), running, self._heard if running else None

    def _keepalive(self) -> None:
        self._conn.send(protocol.encode(protocol.Ping()))

    def _exit_report(self, pending: list, why: str) -> str:
        with self._lock:
            unacked = self._unacked_ids()
        recorded = sum(f.task_id not in unacked for f in pending)
        where = repr(self._endpoint) if self._endpoint is not None else "(embedded)"
        lines = [f"faas: stopped waiting at exit for {len(pending)} invocations of task group {self.task_group_id} "
                 f"at endpoint {where}: {why}."]
        if self._embedded is not None:
            lines.append("  This Executor's embedded endpoint stops with this process: that work is abandoned.")
        else:
            if recorded:
                lines.append(f"  {recorded} were recorded and go on at the endpoint; to collect their results later:")
            if len(pending) > recorded:
                lines.append(f"  {len(pending) - recorded} were not acknowledged: the endpoint may not have recorded "
                             f"them; those it did are found the same way:")
            lines.append(f"    Executor(endpoint={self._endpoint!r}, task_group_id={self.task_group_id!r})"
                         f".reload_tasks()")
        return "\n".join(lines)

    # -- lifecycle --------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``concurrent.futures``: ``cancel_futures`` cancels (on the endpoint
        too) what has not started; ``wait=False`` returns at once, and the
        pending work still finishes (an embedded endpoint lives until it has)."""
        if self._shutdown:
            return
        self._shutdown = True
        if cancel_futures:
            for fut in self._pending():
                fut.cancel()
        if wait:
            self._wait(self._pending())
            self._finalizer()
            return
        self._closer = threading.Thread(target=self._close_when_done, name="faas-executor-closer")
        self._closer.start()  # not a daemon: the interpreter waits for it at exit

    def _close_when_done(self) -> None:
        self._wait_unless_abandoned(self._pending())
        self._finalizer()


def _weak_call(method: Callable[[str], None]) -> Callable[[str], None]:
    """``method``, without keeping its object alive (futures outlive executors)."""
    ref = weakref.WeakMethod(method)

    def call(arg: str) -> None:
        bound = ref()
        if bound is not None:
            bound(arg)

    return call


def _close(conn: Connection, embedded, transport: Transport) -> None:
    conn.close()
    transport.close()
    if embedded is not None:
        embedded.close()

