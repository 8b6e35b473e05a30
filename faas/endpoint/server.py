"""The endpoint's loop: one thread owns the client socket, the worker-loop
socket and the dispatcher.

Clients talk to a ZeroMQ ROUTER socket (``ipc://`` in the endpoint folder,
mode 0600, plus the config's CURVE-encrypted ``tcp://`` listeners), read and
written through :mod:`faas.endpoint.clients` (bounded intake, size caps,
per-client send buffers), and handled by :mod:`faas.endpoint.requests`.
Worker loops talk to a second, CurveZMQ-protected socket
(faas.endpoint.workers). Parsl's done-callbacks wake the loop through a pipe.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import psutil
import zmq
from zmq.auth.thread import ThreadAuthenticator

from faas import protocol
from faas.endpoint import lost
from faas.endpoint.access import TcpListeners, endpoint_keys
from faas.endpoint.clients import ClientSocket
from faas.endpoint.config import EndpointConfig
from faas.endpoint.dispatcher import Dispatcher
from faas.endpoint.fleetview import FleetView
from faas.endpoint.requests import Requests
from faas.endpoint.storeguard import StoreDown, StoreGuard
from faas.endpoint.workers import WorkerLink
from faas.errors import ProtocolError, StoreUnavailable
from faas.home import EndpointDir
from faas.store import Store

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine

log = logging.getLogger(__name__)
MONITOR_PERIOD = 1.0
PER_PASS = 1000  # messages read from the worker socket per pass of the loop
VET_PERIOD = 1.0  # how often tcp clients' keys are checked against authorized_clients
PURGE_PERIOD = 600.0


class Server:
    def __init__(self, epdir: EndpointDir, config: EndpointConfig, store: Store, engine: Engine,
                 exit_with: int | None = None):
        self.epdir = epdir
        self.cfg = config
        self.store = store
        self.engine = engine
        self.started_at = time.time()
        self.exit_with = exit_with
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.clients = ClientSocket(self.sock, config, self._unwatch)
        self._bind_ipc()
        self.keys = endpoint_keys(epdir.path)
        self.auth = ThreadAuthenticator(self.zctx, log=log.getChild("zap"))  # one per context
        self.auth.start()
        self.tcp = (TcpListeners(self.auth, self.sock, self.keys, epdir.authorized_clients, config.listen)
                    if config.listen else None)
        self._ended: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()  # Parsl's callbacks may wake the loop while it closes
        self._wake_open = True
        self._stop = threading.Event()
        self.fatal: str | None = None  # why it stops for good: its clients are told (faas.endpoint.lost)
        self.managers: list[dict[str, Any]] = []
        self.link = WorkerLink(self.zctx, self.auth, config.engine.worker_address(), config.warm_pool)
        self.guard = StoreGuard(config.store.retry_for)
        self._workers_read_at = time.monotonic()  # when the worker socket was last read to the end
        self.dispatcher = Dispatcher(store, engine, config, self.link, self._loop_ended, self.guard)
        self.fleet = FleetView(store, self.dispatcher, self.status, self.started_at)  # what `faas dashboard` shows
        self.requests = Requests(epdir.name, config, store, self.guard, self.dispatcher, self.clients, self._send,
                                 self.status, self.fleet.answer)

    def _bind_ipc(self) -> None:
        self.epdir.socket.unlink(missing_ok=True)  # a stale socket from a killed daemon
        old = os.umask(0o177)
        try:
            self.sock.bind(self.epdir.address)
        finally:
            os.umask(old)
        self.epdir.socket.chmod(0o600)

    # -- threads other than the loop ----------------------------------------
    def _loop_ended(self, token: str, fut: Future) -> None:
        self._ended.put((token, fut))
        self.wake()

    def wake(self) -> None:
        with self._wake_lock:
            if not self._wake_open:
                return  # closed: nothing is left to wake (and its fd number may be reused)
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:  # pipe full: the loop is awake anyway
                pass

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def _monitor(self) -> None:
        """Keep the count of connected worker slots current; purge old results;
        stop, saying why, if the store's file was deleted or replaced."""
        next_purge = 0.0
        while not self._stop.is_set():
            try:
                self.store.check_identity()
            except StoreUnavailable as e:
                log.error("%s; stopping", e)
                self.fatal = str(e)
                self.stop()
                return
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_PERIOD
                try:
                    purged = self.store.purge(self.cfg.store.retention)
                except Exception:
                    log.exception("purging old results failed")
                else:
                    if purged:
                        log.info("purged %d results older than %.0fs", purged, self.cfg.store.retention)
            if self.exit_with is not None and not psutil.pid_exists(self.exit_with):
                log.info("process %d is gone; stopping", self.exit_with)
                self.stop()
                return
            try:
                self.managers = self.engine.managers()
            except Exception as e:  # interchange busy or restarting
                log.debug("cannot list managers: %s", e)
            self.wake()  # lets the loop retire idle workers and send heartbeats
            self._stop.wait(MONITOR_PERIOD)

    # -- the loop -------------------------------------------------------------
    def serve_forever(self) -> None:
        recovered = self.dispatcher.recover()
        if recovered:
            log.info("recovered %d unfinished invocations from the store", recovered)
        threading.Thread(target=self._monitor, name="faas-monitor", daemon=True).start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.link.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        log.info("endpoint %s listening on %s (workers: %s)", self.epdir.name, ", ".join(self.addresses()),
                 ", ".join(self.link.addresses))
        next_heartbeat = next_vet = 0.0
        while not self._stop.is_set():
            due = self.dispatcher.ledger.due()  # a commit held back under load (Ledger.due)
            events = dict(poller.poll(1000 if due is None else min(1000, int(due * 1000) + 1)))
            if self._wake_r in events:
                os.read(self._wake_r, 65536)
            self._read_workers()
            self._probe_store()
            self.requests.retry_deferred()
            self._drain_ended()
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + self.cfg.engine.heartbeat_period
                self.dispatcher.heartbeat(self._workers_read_at)
            if self.tcp is not None and time.monotonic() >= next_vet:
                next_vet = time.monotonic() + VET_PERIOD
                for ident, key in self.tcp.revoked():  # told now, even if they only wait
                    self._refuse(ident, key)
            self._record_and_push()  # results out before the clients' intake; requeued work recorded as pending
            self._read_clients()
            try:
                self.dispatcher.pump()
            except StoreDown:  # nothing is dispatched until the store records it
                pass
            self._record_and_push()
            self._send_to_workers()
            self.clients.flush()
        try:  # what the last passes decided and held back (Ledger.due)
            self.requests.push(self.dispatcher.commit(force=True))
        except StoreDown:
            log.error("stopping with outcomes the store did not take: their invocations run again after a restart")

    def _read_workers(self) -> None:
        for _ in range(PER_PASS):  # bounded, so neither socket is starved
            try:
                frames = protocol.recv(self.link.sock, zmq.NOBLOCK)
            except zmq.Again:
                self._workers_read_at = time.monotonic()
                return
            self._handle_worker(frames[0], frames[1:])

    def _read_clients(self) -> None:
        """This pass's intake; it ends early once a request gave a free worker new
        work or a worker has reported, so that neither waits behind a flood."""
        for msg in self.clients.read():
            known = len(self.dispatcher.items)
            if self.tcp is not None and (key := self.tcp.refused_key(msg.ident, msg.user)):
                self._refuse(msg.ident, key)
            elif msg.too_big:
                self.requests.too_big(msg)
            else:
                self.requests.handle(msg.ident, msg.frames)
            if len(self.dispatcher.items) > known and self.dispatcher.loops.has_room() or self.link.readable():
                return

    def _probe_store(self) -> None:
        """While the store is failing with nothing waiting to be written, a write
        that changes nothing finds out when it is back (status then says so)."""
        waiting = self.requests.deferred or self.dispatcher.ledger.unrecorded()
        if self.guard.down_since is not None and not waiting:
            try:
                self.guard.call(self.store.probe_write)
            except StoreDown:
                pass

    def _record_and_push(self) -> None:
        """Record what the pass decided (one transaction), then tell the clients:
        invocations that started, and outcomes now on record. Outcomes the store
        has refused for longer than its retry window are refused to their clients."""
        try:
            self.requests.push(self.dispatcher.commit())
        except StoreDown:
            self.requests.refuse_unrecorded(self.dispatcher.ledger.overdue())
        self.requests.started(self.dispatcher.take_started())

    def _send_to_workers(self) -> None:
        outbox = list(self.dispatcher.outbox)
        self.dispatcher.outbox.clear()  # in place: the dispatcher's helpers (upkeep) append to this same list
        for token, frames in outbox:
            if not self.link.send(token, frames):
                self.dispatcher.lose(token, "its worker loop is unreachable")

    def close(self) -> None:
        """Retire the loops and close the sockets. The wake pipe stays open
        until :meth:`close_wake`: the engine's callbacks still use it while it
        shuts down."""
        for loop in self.dispatcher.loops:
            self.link.send(loop.token, protocol.encode(protocol.Retire()))
        self.link.close()
        if self.fatal is not None:  # it stops for good: its clients hear why
            lost.say_farewell(self.epdir.name, self.fatal, self.requests.known_clients(), self.clients)
        self.sock.close()
        self.auth.stop()
        self.zctx.term()
        self.epdir.socket.unlink(missing_ok=True)

    def close_wake(self) -> None:
        """After the engine's shutdown; a late wake() is then a no-op."""
        with self._wake_lock:
            self._wake_open = False
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _drain_ended(self) -> None:
        while not self._ended.empty():  # this thread alone takes from it
            self.dispatcher.on_loop_end(*self._ended.get_nowait())

    def _handle_worker(self, ident: bytes, frames: list[bytes]) -> None:
        """A message from an (authenticated) worker loop."""
        token = ident.decode(errors="replace")
        try:
            msg, body = protocol.decode(frames, protocol.WORKER_REPORTS)
            if isinstance(msg, protocol.Progress):
                self.dispatcher.on_progress(token, msg, body)
            elif isinstance(msg, protocol.Ready):
                self.dispatcher.on_ready(token, msg)
            elif isinstance(msg, protocol.Locate):
                self.dispatcher.outbox.append((token, self.dispatcher.peers.locate(token, msg.context_key)))
            else:
                self.dispatcher.heard(token, msg.resources)
        except ProtocolError as e:
            log.warning("bad message from worker loop %s: %s", token, e)
        except Exception:
            log.exception("handling a message from worker loop %s failed", token)

    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        if self.tcp is not None and (key := self.tcp.revoked_key(ident)):  # revoked while connected
            self._refuse(ident, key)
            return
        self.clients.send(ident, frames)

    def _unwatch(self, ident: bytes) -> None:
        self.requests.unwatch(ident)

    def _forget(self, ident: bytes) -> None:
        self._unwatch(ident)
        if self.tcp is not None:
            self.tcp.forget(ident)

    def _refuse(self, ident: bytes, key: str) -> None:
        """A tcp client whose key was revoked while it was connected."""
        log.warning("refused client key %s: it is no longer authorised", key)
        self._forget(ident)
        self.clients.drop(ident)
        self.clients.send_now(ident, protocol.encode(protocol.Error(
            message=f"client key {key} is not authorised on this endpoint", code="not_authorised")))

    def addresses(self) -> list[str]:
        return [self.epdir.address, *(self.tcp.addresses if self.tcp is not None else ())]

    def status(self) -> dict[str, Any]:
        return {
            "name": self.epdir.name,
            "pid": os.getpid(),
            "address": self.epdir.address,
            "addresses": self.addresses(),
            "public_key": self.keys.public_text,
            "uptime": time.time() - self.started_at,
            "managers": [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in m.items()
                          if k in ("manager", "block_id", "worker_count", "tasks", "active", "hostname")}
                         for m in self.managers],
            "worker_slots": sum(m["worker_count"] for m in self.managers if m.get("active", True)),
            "worker_addresses": self.link.addresses,
            "worker_server_key": self.link.server_public.decode(),
            "backlog": self.dispatcher.backlog(),
            "batches_in_flight": self.dispatcher.in_flight(),
            "clients": self.clients.pending(),
            **self.dispatcher.loops.status(),  # per worker: contexts, prewarm, files
            "store_failing": self.guard.status(),  # None while the store takes writes
            "requests_waiting_for_store": len(self.requests.deferred),
        }

