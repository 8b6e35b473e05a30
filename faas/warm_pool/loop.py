"""The worker side of pull-based dispatch: a long-running Parsl task.

Parsl places one loop in each worker process it runs (and replaces lost ones);
the loop connects back to the endpoint over CurveZMQ, says which contexts its
process holds, and runs the invocations the endpoint sends it in batches. Two
threads share the work:

- the task's own (main) thread runs invocations one at a time, or merged into
  one call for a batched function, and reports each as it starts and ends
  (and loads a context the endpoint asks it to preload, before any work);
- an IO thread owns the socket: it queues incoming batches, answers
  heartbeats, streams the reports to the endpoint as they come, drops or
  interrupts revoked invocations, and enforces timeouts.

An invocation that overruns its timeout (or is cancelled while it runs) is
interrupted: a signal makes the running Python code raise
:class:`~faas.errors.Interrupted`. If it is still running ``timeout_grace``
seconds later (stuck in native code), the loop reports it as timed out, hands
back what it had queued, and ends its process; Parsl starts a fresh worker.

The loop ends when the endpoint retires it or falls silent for longer than the
heartbeat threshold; the worker process, and its warm pool, outlive it.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from faas import protocol
from faas.errors import Interrupted, InvocationTimeout, ProtocolError
from faas.protocol import Kind, OutcomeInfo
from faas.warm_pool.files import FilesSetup, NodeFiles, process_files
from faas.warm_pool.prewarm import prewarm
from faas.warm_pool.registry import process_pool
from faas.warm_pool.resources import sample as resources
from faas.warm_pool.runner import Result, Runner, WorkItem, dumps_exception

log = logging.getLogger(__name__)
INTERRUPT_SIGNAL = signal.SIGUSR1
EXIT_STUCK = 75  # exit status of a worker process ended because an invocation would not stop
LOAD_ACK_WAIT = 5.0  # seconds a loader waits for the endpoint to know it runs (then it runs anyway)


def serve(addresses: list[str], token: str, server_key: bytes, public_key: bytes, secret_key: bytes,
          heartbeat_threshold: float, prewarm_modules: list[str] | None = None, files: FilesSetup | None = None) -> str:
    """Pull and run invocations until retired; returns why the loop ended.

    Before it says ready, the loop pays its process's start-up costs
    (:func:`~faas.warm_pool.prewarm.prewarm` of ``prewarm_modules``, done once
    per process) and reports their timings. ``files``: its node cache of context
    files and the keys of the copy channel (:mod:`faas.warm_pool.files`); the
    loop serves the cache to other nodes while it runs."""
    started = time.time()
    warmed = _prewarm_once(prewarm_modules)
    zctx = zmq.Context()
    try:
        sock = _connect(zctx, addresses, token, server_key, public_key, secret_key, heartbeat_threshold,
                        {**warmed, "loop_started": started, "ready_after": time.time() - started}, files)
        if sock is None:
            return f"no endpoint answered at {addresses}"
        return WorkerLoop(zctx, sock, heartbeat_threshold, process_files() if files is not None else None).run()
    finally:
        if files is not None:
            process_files().detach()
        zctx.destroy(linger=0)


_prewarmed: dict[str, Any] | None = None


def _prewarm_once(modules: list[str] | None) -> dict[str, Any]:
    """The process's prewarm timings; a later loop in the same process (the
    previous one was retired) finds the modules imported and reports that."""
    global _prewarmed
    if _prewarmed is None:
        _prewarmed = prewarm(modules)
        return _prewarmed
    return {**_prewarmed, "earlier_loop": True}


def _connect(zctx, addresses, token, server_key, public_key, secret_key, timeout, prewarm, files):
    """Say ``ready`` on the first address where the endpoint answers."""
    for address in addresses:
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, token.encode())
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, public_key, secret_key
        sock.connect(address)
        sock.send_multipart(protocol.encode(protocol.Ready(
            host=socket.gethostname(), pid=os.getpid(), contexts=process_pool().snapshot(), prewarm=prewarm,
            files=process_files().attach(files, address) if files is not None else None,
            resources=resources())))
        if sock.poll(int(timeout * 1000)):
            return sock
        sock.close(0)
    return None


@dataclass
class _Running:
    token: int
    ids: list[str]
    deadline: float | None  # monotonic
    timeout: float | None
    interrupted_at: float | None = None


class WorkerLoop:
    def __init__(self, zctx: zmq.Context, sock: zmq.Socket, heartbeat_threshold: float,
                 files: NodeFiles | None = None):
        self.zctx = zctx
        self.sock = sock
        self.threshold = heartbeat_threshold
        self.files = files  # the node cache of context files, when the endpoint handed one
        self.runner = Runner()
        self.runner.on_init = lambda: self._report("loaded", None)
        self.runner.on_loading = self._loading
        self._load_acked = threading.Event()
        self.runner.pool.keep = set()  # an earlier loop of this process was told what to keep, not this one
        self.runner.on_alone = self._restart_clock
        self.settings = protocol.WorkerSettings()
        self.cond = threading.Condition()
        self.queue: deque[WorkItem] = deque()
        self.preloads: deque[tuple[str, str]] = deque()  # (context key, function id) to load before any work
        self.running: _Running | None = None
        self.dropped: set[str] = set()  # cancelled while running in a merged call: result dropped
        self.stop: str | None = None
        self.finished = False
        self._reports: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._tokens = itertools.count(1)
        self._interrupt: tuple[int, str, str] | None = None  # (running token, reason, message)
        self._main = threading.get_ident()
        address = f"inproc://faas-loop-{id(self)}"
        self._wake_out = zctx.socket(zmq.PAIR)
        self._wake_out.bind(address)
        self._wake_in = zctx.socket(zmq.PAIR)
        self._wake_in.connect(address)
        self._io = threading.Thread(target=self._serve_io, name="faas-loop-io", daemon=True)
        if files is not None:  # a Locate goes out through the IO thread
            files.send_locate = lambda key: self._report("locate", key)

    # -- the main thread: run invocations ---------------------------------------
    def run(self) -> str:
        can_interrupt = threading.current_thread() is threading.main_thread()
        previous = signal.signal(INTERRUPT_SIGNAL, self._on_signal) if can_interrupt else None
        self._io.start()
        try:
            while (work := self._take()) is not None:
                if isinstance(work[0], str):
                    self._preload(*work)
                else:
                    self._execute(*work)
        finally:
            if can_interrupt:
                signal.signal(INTERRUPT_SIGNAL, previous)
            with self.cond:
                self.finished = True
            self._wake()
            self._io.join()
        return self.stop or "ended"

    def _take(self) -> tuple[Any, list[WorkItem]] | tuple[str, str] | None:
        """The next context to preload, or the next invocation, or for a batched
        function up to ``batch_size`` queued invocations of it, waiting at most
        ``batch_wait`` for more."""
        while True:
            with self.cond:
                while not self.queue and not self.preloads and self.stop is None:
                    self.cond.wait(1.0)
                if self.stop is not None:
                    return None
                if self.preloads:
                    return self.preloads.popleft()
                first = self.queue.popleft()
            try:
                fn = self.runner.function(first.function_id)
                break
            except KeyError:  # its body was evicted as it came: handed back, the endpoint sends it again
                self._report("outcomes", [_bare(first.id, Kind.RETURNED)])
            except BaseException as e:  # noqa: BLE001 - e.g. a module the function needs is missing here
                self._report("outcomes", [self.runner.failed(first, e, time.time())])
        items = [first]
        if fn.batch_size == 1:
            return fn, items
        until = time.monotonic() + fn.batch_wait
        with self.cond:
            while True:
                for it in [it for it in self.queue if it.function_id == first.function_id]:
                    if len(items) == fn.batch_size:
                        break
                    self.queue.remove(it)
                    items.append(it)
                left = until - time.monotonic()
                if len(items) == fn.batch_size or left <= 0 or self.stop is not None:
                    return fn, items
                self.cond.wait(left)

    def _execute(self, fn: Any, items: list[WorkItem]) -> None:
        timeout = fn.timeout or self.settings.timeout
        token = next(self._tokens)
        with self.cond:
            self.running = _Running(token, [it.id for it in items],
                                    time.monotonic() + timeout if timeout else None, timeout)
        self._report("started", [it.id for it in items])
        started = time.time()
        try:
            results = self.runner.run(fn, items)
        except Interrupted as e:  # arrived between the runner's own guards
            results = [self.runner.failed(it, e, started) for it in items]
        finally:
            self.running = None  # first, and a plain store: from here on the signal handler raises nothing
        with self.cond:
            self._interrupt = None
            dropped = self.dropped & {it.id for it in items}
            self.dropped -= dropped
        results = [_bare(info.id, Kind.CANCELLED, info.started, info.finished) if info.id in dropped
                   else (info, payload) for info, payload in results]
        self._report("outcomes", results)

    def _loading(self, key: str) -> None:
        """Before a loader runs, the endpoint reads everything reported so far and
        that ``key`` loads: a loader that takes this process down (``os.abort()``,
        a crash in native code) is then blamed for it, not the invocations that
        finished before it, whose reports would otherwise die with the process."""
        self._load_acked.clear()
        self._report("loading", key)
        self._load_acked.wait(LOAD_ACK_WAIT)

    def _preload(self, key: str, fid: str) -> None:
        try:
            self.runner.preload(fid)
        except BaseException:  # noqa: BLE001 - the loader's own failure is reported with the init events
            log.exception("preloading context %s failed", key)
        self._report("preloaded", key)

    def _restart_clock(self, item: WorkItem) -> None:
        """A merged call failed and its members run again one at a time: each
        gets the whole timeout, as it would have had alone, and is interrupted alone."""
        with self.cond:
            timeout = self.running.timeout
            self.running = _Running(next(self._tokens), [item.id], time.monotonic() + timeout if timeout else None,
                                    timeout)

    def _on_signal(self, signum, frame) -> None:
        pending = self._interrupt
        running = self.running
        if pending is not None and running is not None and pending[0] == running.token:
            self._interrupt = None
            raise Interrupted(pending[1], pending[2])

    def _report(self, kind: str, value: Any) -> None:
        self._reports.put((kind, value))
        self._wake()

    def _wake(self) -> None:
        self._wake_out.send(b"", zmq.NOBLOCK)

    # -- the IO thread: the socket, timeouts, revocations -------------------------
    def _serve_io(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_in, zmq.POLLIN)
        if self.files is not None:  # its state changed (on the stage's or the file server's thread)
            poller.register(self.files.wake_fd, zmq.POLLIN)
        last_heard = time.monotonic()
        while True:
            events = dict(poller.poll(self._poll_ms()))
            if self._wake_in in events:
                while self._wake_in.poll(0):
                    self._wake_in.recv()
            if self.files is not None and self.files.wake_fd in events:
                self.files.drain()
            if self.sock in events:
                last_heard = time.monotonic()
                while self.sock.poll(0):
                    self._on_order(protocol.recv(self.sock))
            self._send_reports()
            self._enforce_timeouts()
            if self.stop is None and time.monotonic() - last_heard > self.threshold:
                self._end("endpoint silent", interrupt=True)
            with self.cond:
                if self.finished:
                    self._send_reports()
                    return

    def _poll_ms(self) -> int:
        running = self.running
        if running is None or running.deadline is None:
            return 1000
        due = running.deadline if running.interrupted_at is None else \
            running.interrupted_at + self.settings.timeout_grace
        return max(1, min(1000, int((due - time.monotonic()) * 1000) + 1))

    def _on_order(self, frames: list[bytes]) -> None:
        try:
            msg, body = protocol.decode(frames, protocol.WORKER_ORDERS)
        except ProtocolError as e:
            log.error("ignoring a malformed message from the endpoint: %s", e)
            return
        if isinstance(msg, protocol.Heartbeat):
            self.sock.send_multipart(protocol.encode(protocol.Heartbeat(resources=resources())))
        elif isinstance(msg, protocol.Batch):
            self._on_batch(msg, body)
        elif isinstance(msg, protocol.Revoke):
            self._on_revoke(msg.ids, msg.reason)
        elif isinstance(msg, protocol.Retire):
            self._end("retired", interrupt=False)
        elif isinstance(msg, protocol.Preload):
            if msg.peers and self.files is not None:
                self.files.hint(msg.peers)
            with self.cond:
                self.runner.add_bodies(dict(zip(msg.functions, body)),
                                       keep={msg.function, *(it.function_id for it in self.queue)})
                self.preloads.append((msg.context_key, msg.function))
                self.cond.notify()
        elif isinstance(msg, protocol.Keep):
            self.runner.pool.keep = set(msg.contexts)
        elif isinstance(msg, protocol.Peers) and self.files is not None:
            self.files.answer(msg.context_key, msg.addresses)
        elif isinstance(msg, protocol.LoadAck):
            self._load_acked.set()

    def _on_batch(self, msg: protocol.Batch, body: list[bytes]) -> None:
        self.settings = msg.settings
        pool = self.runner.pool
        pool.idle_timeout, pool.memory_budget = msg.settings.idle_timeout, msg.settings.memory_budget
        pool.host_budget = msg.settings.host_budget
        self.runner.max_result_bytes = msg.settings.max_result_bytes
        if msg.peers and self.files is not None:
            self.files.hint(msg.peers)
        self.runner.output_log_level = msg.settings.output_log_level
        if msg.settings.function_cache_bytes is not None:
            self.runner.bodies.max_bytes = msg.settings.function_cache_bytes
        items = [WorkItem(inv_id, fid, args)
                 for (inv_id, fid), args in zip(msg.items, body[len(msg.functions):])]
        with self.cond:
            needed = {it.function_id for it in [*self.queue, *items]}
            self.runner.add_bodies(dict(zip(msg.functions, body)), keep=needed)
            self.queue.extend(items)
            self.cond.notify()

    def _on_revoke(self, ids: list[str], reason: str) -> None:
        """Queued ones leave the queue (reported cancelled, or returned unstarted);
        a running one is interrupted, or its result dropped when it shares a
        merged call with invocations that go on."""
        wanted = set(ids)
        with self.cond:
            taken = [it for it in self.queue if it.id in wanted]
            for it in taken:
                self.queue.remove(it)
            running = self.running
            if reason == "cancel" and running is not None and wanted & set(running.ids):
                if wanted >= set(running.ids):
                    self._interrupt_main(running, "cancel", "cancelled by a client")
                else:
                    self.dropped |= wanted & set(running.ids)
        kind = Kind.CANCELLED if reason == "cancel" else Kind.RETURNED
        self._send_reports([_bare(it.id, kind) for it in taken])

    def _interrupt_main(self, running: _Running, reason: str, message: str) -> None:
        self._interrupt = (running.token, reason, message)
        running.interrupted_at = time.monotonic()
        signal.pthread_kill(self._main, INTERRUPT_SIGNAL)

    def _enforce_timeouts(self) -> None:
        running = self.running
        if running is None or running.deadline is None or time.monotonic() < running.deadline:
            return
        if running.interrupted_at is None:
            self._interrupt_main(running, "timeout", f"ran longer than its timeout of {running.timeout:g}s "
                                                     f"on {socket.gethostname()}:{os.getpid()}")
        elif time.monotonic() > running.interrupted_at + self.settings.timeout_grace:
            self._give_up(running)

    def _give_up(self, running: _Running) -> None:
        """The interrupted code does not return (native code): report it, hand
        back the queue, and end this process so that Parsl starts a fresh one."""
        log.error("invocation(s) %s ignored the interrupt for %.0fs; ending worker process %d",
                  running.ids, self.settings.timeout_grace, os.getpid())
        error = InvocationTimeout(f"ran longer than its timeout of {running.timeout:g}s and did not stop "
                                  f"within {self.settings.timeout_grace:g}s; its worker process was replaced")
        with self.cond:
            queued, self.queue = list(self.queue), deque()
        self._send_reports([_bare(i, Kind.TIMEOUT, payload=dumps_exception(error)) for i in running.ids]
                           + [_bare(it.id, Kind.RETURNED) for it in queued])
        self._wake_out.close(0)
        self._wake_in.close(0)
        self.sock.close(linger=5000)
        self.zctx.term()  # returns once the report is sent (or 5 s passed)
        os._exit(EXIT_STUCK)

    def _end(self, reason: str, interrupt: bool) -> None:
        """Stop taking work; hand back the queue; interrupt what runs if asked."""
        with self.cond:
            self.stop = reason
            queued, self.queue = list(self.queue), deque()
            running = self.running
            self.cond.notify()
        if interrupt and running is not None and running.interrupted_at is None:
            self._interrupt_main(running, "cancel", f"its worker loop ended: {reason}")
        self._send_reports([_bare(it.id, Kind.RETURNED) for it in queued])

    def _send_reports(self, extra: list[Result] = ()) -> None:
        """Everything reported since the last send, in one progress message; the
        warm pool's state with outcomes, and as soon as a context has loaded (the
        endpoint then knows a long first invocation is not a load)."""
        started: list[str] = []
        outcomes: list[Result] = list(extra)
        preloaded: list[str] = []
        loaded, loading = False, None
        while True:
            try:
                kind, value = self._reports.get_nowait()
            except queue.Empty:
                break
            if kind == "loaded":
                loaded = True
            elif kind == "preloaded":
                preloaded.append(value)
            elif kind == "locate":
                self._send(protocol.Locate(context_key=value))
            elif kind == "loading":
                loading = value
            else:
                (started if kind == "started" else outcomes).extend(value)
        with self.cond:
            dropped = self.runner.take_dropped()
        files = self.files.changed() if self.files is not None else None
        if not (started or outcomes or dropped or loaded or preloaded) and files is None and loading is None:
            return
        pool_changed = bool(outcomes) or loaded or bool(preloaded)
        msg = protocol.Progress(started=started, outcomes=[info for info, _ in outcomes],
                                inits=self.runner.inits() if pool_changed else [],
                                contexts=self.runner.pool.snapshot() if pool_changed else None,
                                dropped_functions=dropped, files=files, loading=loading, preloaded=preloaded)
        self._send(msg, [payload for _, payload in outcomes])

    def _send(self, msg: protocol._Message, frames: list[bytes] = ()) -> None:
        try:
            protocol.send(self.sock, protocol.encode(msg, frames), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.error("cannot report to the endpoint: %s", e)


def _bare(inv_id: str, kind: Kind, started: float | None = None, finished: float | None = None,
          payload: bytes = b"") -> Result:
    """An outcome decided by the loop rather than by running the code (cancelled,
    returned, given up on): times default to now."""
    now = time.time()
    return OutcomeInfo(id=inv_id, kind=kind, started=now if started is None else started,
                       finished=now if finished is None else finished), payload

