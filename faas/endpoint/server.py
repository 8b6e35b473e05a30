"""The endpoint's loop: one thread owns the client socket, the worker-loop
socket and the dispatcher.

Clients talk to a ZeroMQ ROUTER socket (``ipc://`` in the endpoint folder,
mode 0600, plus the config's CURVE-encrypted ``tcp://`` listeners), read and
written through :mod:`faas.endpoint.clients` (bounded intake, size caps,
per-client send buffers). A
submission is recorded in the store before it is acknowledged and dispatched;
a result is recorded before it is pushed to the clients that watch its task
group. Worker loops talk to a second, CurveZMQ-protected socket
(faas.endpoint.workers). Parsl's done-callbacks wake the loop through a pipe.
"""

from __future__ import annotations

import json
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
from faas.endpoint import storeguard
from faas.endpoint.access import TcpListeners, endpoint_keys
from faas.endpoint.clients import ClientSocket, Message
from faas.endpoint.config import EndpointConfig
from faas.endpoint.dispatcher import Dispatcher, Item
from faas.endpoint.ledger import Final
from faas.endpoint.storeguard import DeferredRequests, StoreDown, StoreGuard
from faas.endpoint.workers import WorkerLink
from faas.errors import ProtocolError, StoreUnavailable
from faas.home import EndpointDir
from faas.store import State, Store

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine

log = logging.getLogger(__name__)
MONITOR_PERIOD = 1.0
PER_PASS = 1000  # messages read from the worker socket per pass of the loop
VET_PERIOD = 1.0  # how often tcp clients' keys are checked against authorized_clients
PURGE_PERIOD = 600.0
WAITS_FOR_STORE = {"submit", "watch", "cancel"}  # requests that queue behind one waiting for the store


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
        self.watchers: dict[str, set[bytes]] = {}  # task group -> client identities
        self._ended: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()  # Parsl's callbacks may wake the loop while it closes
        self._wake_open = True
        self._stop = threading.Event()
        self.managers: list[dict[str, Any]] = []
        self.link = WorkerLink(self.zctx, self.auth, config.engine.worker_address(), config.warm_pool)
        self.guard = StoreGuard(config.store.retry_for)
        self._workers_read_at = time.monotonic()  # when the worker socket was last read to the end
        self.deferred = DeferredRequests(self.guard)
        self.dispatcher = Dispatcher(store, engine, config, self.link, self._loop_ended, self.guard)

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
            self.deferred.retry(self._retry_request, self._refuse_request)
            self._read_clients()
            self._drain_ended()
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + self.cfg.engine.heartbeat_period
                self.dispatcher.heartbeat(self._workers_read_at)
            if self.tcp is not None and time.monotonic() >= next_vet:
                next_vet = time.monotonic() + VET_PERIOD
                for ident, key in self.tcp.revoked():  # told now, even if they only wait
                    self._refuse(ident, key)
            self._record_and_push()  # before dispatch: requeued work is recorded as pending first
            try:
                self.dispatcher.pump()
            except StoreDown:  # nothing is dispatched until the store records it
                pass
            self._record_and_push()
            self._send_to_workers()
            self.clients.flush()
        try:  # what the last passes decided and held back (Ledger.due)
            self._push(self.dispatcher.commit(force=True))
        except StoreDown:
            log.error("stopping with outcomes the store did not take: their invocations run again after a restart")

    def _read_workers(self) -> None:
        for _ in range(PER_PASS):  # bounded, so neither socket is starved
            try:
                frames = self.link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self._workers_read_at = time.monotonic()
                return
            self._handle_worker(frames[0], frames[1:])

    def _read_clients(self) -> None:
        for msg in self.clients.read():
            if self.tcp is not None and (key := self.tcp.refused_key(msg.ident, msg.user)):
                self._refuse(msg.ident, key)
            elif msg.too_big:
                self._too_big(msg)
            else:
                self._handle(msg.ident, msg.frames)

    def _too_big(self, msg: Message) -> None:
        cap = self.clients.max_message
        self.clients.bad.warning("refused a %d-byte message from a client: over max_message_bytes (%d)",
                                 msg.too_big, cap)
        self._send(msg.ident, protocol.encode(protocol.Error(
            message=f"message of {msg.too_big} bytes exceeds the endpoint's max_message_bytes ({cap})",
            ids=_invocation_ids(msg.frames), code="too_large")))

    def _probe_store(self) -> None:
        """While the store is failing with nothing waiting to be written, a write
        that changes nothing finds out when it is back (status then says so)."""
        if self.guard.down_since is not None and not self.deferred and not self.dispatcher.ledger.unrecorded():
            try:
                self.guard.call(self.store.probe_write)
            except StoreDown:
                pass

    def _record_and_push(self) -> None:
        """Record what the pass decided (one transaction), then tell the clients:
        invocations that started, and outcomes now on record. Outcomes the store
        has refused for longer than its retry window are refused to their clients."""
        try:
            self._push(self.dispatcher.commit())
        except StoreDown:
            self._refuse_unrecorded(self.dispatcher.ledger.overdue())
        by_group: dict[str, list[str]] = {}
        for it in self.dispatcher.take_started():
            by_group.setdefault(it.group_id, []).append(it.id)
        for group, ids in by_group.items():
            self._send_group(group, protocol.encode(protocol.Running(ids=ids)))

    def _send_to_workers(self) -> None:
        outbox, self.dispatcher.outbox = self.dispatcher.outbox, []
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
        self.sock.close(0)
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
                self.dispatcher.heard(token)
        except ProtocolError as e:
            log.warning("bad message from worker loop %s: %s", token, e)
        except Exception:
            log.exception("handling a message from worker loop %s failed", token)

    # -- messages -------------------------------------------------------------
    def _handle(self, ident: bytes, frames: list[bytes]) -> None:
        msg = None
        try:
            msg, body = protocol.decode(frames, protocol.CLIENT_REQUESTS)
            if self.deferred and msg.type in WAITS_FOR_STORE:
                self.deferred.add(ident, msg, body)  # behind earlier ones waiting for the store
                return
            getattr(self, f"_on_{msg.type}")(ident, msg, body)
        except StoreDown:
            self.deferred.add(ident, msg, body)
        except ProtocolError as e:
            self.clients.bad.warning("bad message from a client: %s", e)
            self._send(ident, protocol.encode(protocol.Error(message=str(e), ids=_invocation_ids(frames))))
        except Exception as e:
            self._failed_request(ident, msg, e)

    def _retry_request(self, ident: bytes, msg, body: list[bytes]) -> None:
        """A request that waited for the store, tried again (StoreDown: it waits on)."""
        try:
            getattr(self, f"_on_{msg.type}")(ident, msg, body)
        except StoreDown:
            raise
        except Exception as e:
            self._failed_request(ident, msg, e)

    def _failed_request(self, ident: bytes, msg, e: Exception) -> None:
        """A request that raised (not for the store): the client hears why, naming a submit's invocations."""
        log.exception("request failed")
        self._send(ident, protocol.encode(protocol.Error(message=f"endpoint error: {type(e).__name__}: {e}",
                                                         ids=_submitted_ids(msg))))

    def _refuse_request(self, ident: bytes, msg, why: str) -> None:
        """A request the store could not take within its retry window: nothing of it
        was recorded, and a refused submission never runs."""
        ids = _submitted_ids(msg)
        if ids:
            why += f"; these {len(ids)} invocations were not recorded and will not run: submit them again"
        log.error("refused a %s request: %s", msg.type, why)
        self._send(ident, protocol.encode(protocol.Error(message=why, ids=ids, code=storeguard.CODE)))

    def _refuse_unrecorded(self, finals: list[Final]) -> None:
        """Tell clients which outcomes the store has not taken within its retry
        window. They are kept, and recorded (and pushed) once the store is back."""
        by_group: dict[str, list[str]] = {}
        for f in finals:
            by_group.setdefault(f.group_id, []).append(f.id)
        for group, ids in by_group.items():
            why = self.guard.refusal(f"the outcome of {len(ids)} invocations")
            log.error("%s; their clients are told", why)
            self._send_group(group, protocol.encode(protocol.Error(
                message=f"{why}; the endpoint keeps it and records it once the store is back "
                        f"(Executor.reload_tasks then finds it)", ids=ids, code=storeguard.CODE)))

    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        if self.tcp is not None and (key := self.tcp.revoked_key(ident)):  # revoked while connected
            self._refuse(ident, key)
            return
        self.clients.send(ident, frames)

    def _unwatch(self, ident: bytes) -> None:
        for group in self.watchers.values():
            group.discard(ident)

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

    def _on_ping(self, ident: bytes, msg: protocol.Ping, body: list[bytes]) -> None:
        self._send(ident, protocol.encode(protocol.Pong(max_payload_bytes=self.cfg.max_payload_bytes,
                                                               max_message_bytes=self.clients.max_message)))

    def _on_status(self, ident: bytes, msg: protocol.StatusRequest, body: list[bytes]) -> None:
        self._send(ident, protocol.encode(protocol.StatusReply(status=self.status())))

    def _on_submit(self, ident: bytes, msg: protocol.Submit, body: list[bytes]) -> None:
        limit = self.cfg.max_payload_bytes
        too_big = [len(b) for b in body if len(b) > limit]
        if too_big:
            raise ProtocolError(f"payload of {max(too_big)} bytes exceeds the endpoint's "
                                f"max_payload_bytes ({limit})")
        ctx_of = {}
        for f, blob in zip(msg.functions, body):
            self.guard.call(self.store.add_function, f.id, f.name, f.context_key, f.context, f.retries, blob,
                            f.batch_size)
            self.dispatcher.register_function(f.id, blob, f)
            ctx_of[f.id] = f.context_key
        for fid in {inv.function for inv in msg.invocations} - set(ctx_of):  # sent in an earlier message
            known = self.dispatcher.functions.get(fid)
            if known is None:
                raise ProtocolError(f"unknown function id {fid}")
            ctx_of[fid] = known.context_key
        rows = [dict(id=inv.id, group_id=msg.group, function_id=inv.function, context_key=ctx_of[inv.function],
                     args=args) for inv, args in zip(msg.invocations, body[len(msg.functions):])]
        new = self.guard.call(self.store.add_invocations, rows)
        self.watchers.setdefault(msg.group, set()).add(ident)
        self.dispatcher.submit(Item(r["id"], msg.group, r["function_id"], r["context_key"], r["args"])
                               for r in rows if r["id"] in new)
        self._send(ident, protocol.encode(protocol.Ack(ids=[r["id"] for r in rows])))
        resent = [r["id"] for r in rows if r["id"] not in new]
        if resent:  # a resend after a reconnect: results already recorded go out again
            self._push_to(ident, self.guard.call(self.store.final_results, ids=resent))

    def _on_watch(self, ident: bytes, msg: protocol.Watch, body: list[bytes]) -> None:
        self.watchers.setdefault(msg.group, set()).add(ident)
        ids, finals = self.guard.call(self.store.group_ids, msg.group), self.guard.call(
            self.store.final_results, group_id=msg.group)
        self._send(ident, protocol.encode(protocol.Tasks(group=msg.group, ids=ids)))
        self._push_to(ident, finals)

    def _on_cancel(self, ident: bytes, msg: protocol.Cancel, body: list[bytes]) -> None:
        self.dispatcher.cancel(msg.ids)

    # -- results --------------------------------------------------------------
    def _push(self, finals: list[Final]) -> None:
        by_group: dict[str, list[Final]] = {}
        for f in finals:
            by_group.setdefault(f.group_id, []).append(f)
        for group, items in by_group.items():
            self._send_group(group, _results_message([(f.id, f.state, f.payload, f.error) for f in items]))

    def _send_group(self, group: str, msg: list[bytes]) -> None:
        for ident in list(self.watchers.get(group, ())):
            self._send(ident, msg)

    def _push_to(self, ident: bytes, rows: list[dict]) -> None:
        if rows:
            self._send(ident, _results_message([(r["id"], r["state"], r["result"], r["error"]) for r in rows]))

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
            "requests_waiting_for_store": len(self.deferred),
        }


def _invocation_ids(frames: list[bytes]) -> list[str]:
    """The ids a refused submit carried, so the client can fail just those."""
    try:
        header = json.loads(frames[0]) if frames else None
    except (ValueError, RecursionError):
        return []
    invocations = header.get("invocations") if isinstance(header, dict) else None
    if not isinstance(invocations, list):
        return []
    return [inv["id"] for inv in invocations
            if isinstance(inv, dict) and isinstance(inv.get("id"), str) and 0 < len(inv["id"]) <= protocol.MAX_ID_LEN]


def _submitted_ids(msg) -> list[str]:
    return [inv.id for inv in msg.invocations] if isinstance(msg, protocol.Submit) else []


def _results_message(rows: list[tuple[str, State, bytes | None, str | None]]) -> list[bytes]:
    items = [protocol.ResultItem(id=i, state=state.value, error=err if state is not State.SUCCEEDED else None)
             for i, state, _, err in rows]
    return protocol.encode(protocol.Results(items=items), [p or b"" for _, _, p, _ in rows])
