"""The simulated fleet of benchmarks/fleet.py: GPU slots that join and leave as
a trace says, each running a worker loop that speaks the real protocol to the
real daemon over a real CurveZMQ DEALER socket, but sleeps instead of running
code.

Each slot is a node of its own: a GPU that holds one model at a time, host
memory that holds up to ``host_models`` parked ones (when parking is on), a
node disk where a context's files stay once staged, and a file server. Moving
a context costs what :mod:`cluster` says a real cluster charges: a load reads
the files (from the node's disk when staged there, else from the peers the
daemon's ``Batch.peers``/``Preload.peers`` name, else from the shared
filesystem) and then initialises; parking and waking copy over PCIe. Peers
follow the real design: a holder serves at most ``max_serving`` copies at once;
a fetcher takes the first hinted peer that has the files and room, waits for a
hinted peer still staging them, or, when every hinted peer is busy or gone,
asks the daemon again (``Locate``); a copy whose holder is preempted goes on
from where it stopped. The loop reports its node cache (``FilesState``) as the
real one does, so the daemon's peer index is the one under test.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from cluster import GB, Cluster, Flow, Pipe

from faas import protocol
from faas.function import ctx_function
from faas.protocol import Kind, OutcomeInfo

JITTER = 0.25  # lognormal sigma of one claim's time


@dataclass(frozen=True)
class Model:
    name: str
    size: float  # bytes of its files (and of its weights on the GPU)
    call: float  # mean seconds per claim on a speed-1 GPU (paper time)

    @property
    def key(self) -> str:
        return ctx_function(never_called, model=f"fleet-sim/{self.name}").context_key


MODEL_SETS = {
    # the three-model trace: a 1B, a 3B and an 8B model in bf16
    "three": [Model("small", 2 * GB, 8.0), Model("medium", 6 * GB, 16.0), Model("large", 16 * GB, 32.0)],
    # the paper's 13-minute shape: one 8B model, claims of about a second
    "one": [Model("8b", 16 * GB, 1.0)],
}


def never_called(claim):
    raise RuntimeError("the fleet simulator never runs the code it is sent")


def jitter(seed: str, sigma: float = JITTER) -> float:
    """A lognormal factor of mean 1, the same for the same invocation id on every worker."""
    z = random.Random(zlib.crc32(seed.encode())).gauss(0.0, 1.0)
    return math.exp(sigma * z - sigma * sigma / 2)


@dataclass
class Slot:
    id: int
    speed: float
    end: str
    loaded: str | None = None  # the context on its GPU, ready
    parked: list[str] = field(default_factory=list)  # in host memory, least recently used first
    staged: set[str] = field(default_factory=set)  # files complete on its node disk
    staging: dict[str, list[Callable[[], None]]] = field(default_factory=dict)  # -> called when complete
    uplink: Pipe | None = None  # its link, shared by the copies it serves
    copies: list[tuple[Flow, Callable[[float], None]]] = field(default_factory=list)  # served now; on loss
    freed: list[Callable[[], None]] = field(default_factory=list)  # fetchers waiting for a copy to end
    source_bytes: collections.Counter = field(default_factory=collections.Counter)
    peer_bytes: collections.Counter = field(default_factory=collections.Counter)
    wakes: collections.Counter = field(default_factory=collections.Counter)
    wake_seconds: collections.Counter = field(default_factory=collections.Counter)
    worker: SimWorker | None = None
    gone: bool = False
    spawned: bool = False  # a loop ran on it
    done: int = 0  # invocations it reported finished
    joined: float | None = None  # monotonic: when the trace brought it
    left: float | None = None  # and took it away
    idle_from: float | None = None  # monotonic: idle since (nothing to run), while idle
    idle: list[tuple[float, float]] = field(default_factory=list)  # its idle spans so far

    @property
    def address(self) -> str:
        return f"tcp://fleet-{self.id}:7000"

    def idle_until(self, now: float) -> None:
        if self.idle_from is not None:
            self.idle.append((self.idle_from, now))
            self.idle_from = None


@dataclass
class SimWorker:
    slot: Slot
    token: str
    sock: zmq.Socket
    queue: collections.deque = field(default_factory=collections.deque)  # (inv id, fid, args)
    current: tuple[str, str, bytes, float] | None = None  # (inv id, fid, args, started wall time)
    cancelled: bool = False
    retiring: bool = False
    hints: dict[str, list[str]] = field(default_factory=dict)  # context -> peers the daemon named
    preloads: collections.deque = field(default_factory=collections.deque)  # contexts to preload
    preparing: str | None = None  # the context it is moving onto its GPU
    preloading: str | None = None  # the same, when the daemon asked for it (Preload)
    load_started: float = 0.0  # paper time its current move began
    first_started: float | None = None  # wall time the move for its next invocation began (its start, as reported)
    fetch: tuple[Pipe, Flow, Slot | None] | None = None  # its copy in progress (None source: the filesystem)
    locating: dict[str, float] = field(default_factory=dict)  # context -> bytes still to fetch, while it asks
    started: list[str] = field(default_factory=list)  # to report in the next progress message
    outcomes: list[tuple[OutcomeInfo, bytes]] = field(default_factory=list)
    inits: list[protocol.InitInfo] = field(default_factory=list)
    preloaded: list[str] = field(default_factory=list)
    changed: bool = False  # its warm pool or node cache changed since the last report


class Fleet:
    """Simulated workers driven by one thread: a zmq Poller over their sockets
    and a heap of timed events (slots joining and leaving, invocations ending,
    copies and loads)."""

    def __init__(self, trace: dict, scale: float, folder: Path, models: list[Model], cluster: Cluster,
                 parking: bool = False, host_models: int = 3, max_serving: int = 2, seed: int = 1):
        self.trace, self.scale = trace, scale
        self.cluster, self.parking, self.host_models, self.max_serving = cluster, parking, host_models, max_serving
        self.rng = random.Random(seed)
        self.zctx = zmq.Context()
        self.zctx.setsockopt(zmq.LINGER, 0)
        self.zctx.set(zmq.MAX_SOCKETS, 65536)
        self.orders_address, self.reports_address = f"ipc://{folder}/orders", f"ipc://{folder}/reports"
        self.orders = self.zctx.socket(zmq.PULL)
        self.orders.bind(self.orders_address)
        self.reports = self.zctx.socket(zmq.PUSH)
        self.reports.bind(self.reports_address)
        self.poller = zmq.Poller()
        self.poller.register(self.orders, zmq.POLLIN)
        self.by_sock: dict[zmq.Socket, SimWorker] = {}
        self.by_address: dict[str, Slot] = {}
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self.tokens: collections.deque[list[bytes]] = collections.deque()  # orders waiting for a slot
        self.idle: collections.deque[Slot] = collections.deque()  # slots waiting for a token
        self.slots: list[Slot] = []
        self.fn_ctx: dict[str, str] = {}
        self.models = {m.key: m for m in models}
        self.shared_fs = Pipe(cluster.shared_fs, cluster.link, self.clock, self.at)
        self.executed: collections.Counter[str] = collections.Counter()  # OK outcomes reported, per invocation
        self.loads: collections.Counter[str] = collections.Counter()  # loader runs, by where the files came from
        self.moved: collections.Counter[str] = collections.Counter()  # bytes, by where they came from
        self.parks = 0
        self.moves: list[tuple[float, int, str, str]] = []  # (paper time, slot, context, "load" or "wake")
        self.revoked = 0  # invocations the daemon took back (reclaim) or cancelled
        self.batches = 0
        self.late: list[float] = []  # how late each invocation's end was handled: the simulator's own lag
        self.lost_running = 0  # invocations running or queued on a slot when it was preempted
        self.busy = {"running": 0.0, "loading": 0.0}  # the slots' seconds, for where their time went
        self.last_batch = 0.0  # monotonic: when the last batch arrived (the daemon's backlog was out by then)
        self.last_batch_of: dict[str, float] = {}  # context -> paper time its last batch arrived
        self._touched: dict[int, SimWorker] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self.t0 = 0.0

    def start(self) -> None:
        """Time zero of the trace."""
        self.t0 = time.monotonic()
        for s in self.trace["slots"]:
            slot = Slot(s["id"], s["speed"], s["end"])
            slot.uplink = Pipe(self.cluster.link, self.cluster.link, self.clock, self.at)
            self.slots.append(slot)
            self.by_address[slot.address] = slot
            self._at(s["join"] / self.scale, "join", slot)
            if s["leave"] is not None:
                self._at(s["leave"] / self.scale, "leave", slot)
        self._thread.start()

    def time_shares(self, end: float) -> dict[str, float]:
        """Where the slots' time went until ``end`` (monotonic): running, loading, or
        idle (joined, nothing to run); of the idle time, how much passed while the
        daemon still had work to send (before the last batch arrived): dispatch lag."""
        total = sum(min(end, s.left or end) - s.joined for s in self.slots if s.joined is not None)
        shares = {k: v / total for k, v in self.busy.items()}
        spans = [span for s in self.slots for span in s.idle] + [
            (s.idle_from, end) for s in self.slots if s.idle_from is not None]
        starved = sum(max(0.0, min(b, self.last_batch) - a) for a, b in spans)
        return {**shares, "idle": max(0.0, 1.0 - sum(shares.values())), "idle while work was queued": starved / total}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.zctx.destroy(linger=0)

    # -- the clock: real time, and the paper's (scaled) -------------------------------
    def clock(self) -> float:
        return (time.monotonic() - self.t0) * self.scale

    def at(self, paper_time: float, fn: Callable[[], None]) -> None:
        self._at(paper_time / self.scale, "call", fn)

    def after(self, paper_seconds: float, fn: Callable[[], None]) -> None:
        self.at(self.clock() + paper_seconds, fn)

    def _at(self, t: float, kind: str, what: Any) -> None:
        heapq.heappush(self.events, (self.t0 + t, next(self._seq), kind, what))

    def _call(self, fn: Callable[[], None]) -> None:
        fn()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min(0.05, self.events[0][0] - now) if self.events else 0.05
            ready = self.poller.poll(max(2, int(wait * 1000)))  # >= 2 ms: one poll serves many events
            self._touched = {}
            for sock, _ in ready:
                if sock is self.orders:
                    while self.orders.poll(0):
                        self._order(self.orders.recv_multipart())
                    continue
                w = self.by_sock.get(sock)
                while w is not None and not sock.closed and sock.poll(0):
                    self._on_message(w, sock.recv_multipart())
            now = time.monotonic()
            while self.events and self.events[0][0] <= now:
                due, _, kind, what = heapq.heappop(self.events)
                if kind == "done":
                    self.late.append(now - due)
                getattr(self, f"_{kind}")(what)
            for w in self._touched.values():
                self._flush(w)

    def _touch(self, w: SimWorker | None) -> None:
        if w is not None:
            self._touched[id(w)] = w

    # -- the trace ------------------------------------------------------------
    def _join(self, slot: Slot) -> None:
        if slot.joined is None:
            slot.joined = time.monotonic()
        if slot.idle_from is None:
            slot.idle_from = time.monotonic()
        if self.tokens:
            self._spawn(slot, self.tokens.popleft())
        else:
            self.idle.append(slot)

    def _leave(self, slot: Slot) -> None:
        """Preempted without goodbye: its node (disk, host memory, file server) goes with it."""
        slot.gone, slot.left = True, time.monotonic()
        slot.idle_until(slot.left)
        for flow, lost in slot.copies:  # its copies go on from another holder, from where they stopped
            lost(slot.uplink.remove(flow))
        slot.copies = []
        waiting = [cb for cbs in slot.staging.values() for cb in cbs] + slot.freed
        slot.staging, slot.freed = {}, []
        w = slot.worker
        if w is not None:
            self._drop_fetch(w)
        for cb in waiting:  # fetchers that waited on it look elsewhere
            cb()
        if w is None:
            self.idle.remove(slot)
            return
        self.lost_running += len(w.queue) + (w.current is not None)
        self._close(w)
        if slot.end == "report":
            self._report(b"lost", w.token, b"block preempted")

    def _order(self, frames: list[bytes]) -> None:
        if self.idle:
            self._spawn(self.idle.popleft(), frames)
        else:
            self.tokens.append(frames)

    def _spawn(self, slot: Slot, order: list[bytes]) -> None:
        token, address, server_public, public, secret = order
        sock = self.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, token)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
        sock.connect(address.decode())
        w = SimWorker(slot, token.decode(), sock)
        slot.worker, slot.spawned = w, True
        self.by_sock[sock] = w
        self.poller.register(sock, zmq.POLLIN)
        sock.send_multipart(protocol.encode(protocol.Ready(host=f"fleet-{slot.id}", pid=1000 + slot.id,
                                                           contexts=self._contexts(slot), files=self._files(slot))))

    def _report(self, what: bytes, token: str, why: bytes) -> None:
        """To the engine; dropped once the daemon is gone (it retires every loop as it stops)."""
        try:
            self.reports.send_multipart([what, token.encode(), why], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _close(self, w: SimWorker) -> None:
        self.poller.unregister(w.sock)
        del self.by_sock[w.sock]
        w.sock.close(0)
        w.slot.worker = None

    def _contexts(self, slot: Slot) -> dict[str, dict]:
        return {k: {"loaded": k == slot.loaded, "parked": k in slot.parked, "wakes": slot.wakes[k],
                    "wake_seconds": slot.wake_seconds[k] / self.scale} for k in self.models}

    def _files(self, slot: Slot) -> protocol.FilesState:
        return protocol.FilesState(address=slot.address, node=f"fleet-node-{slot.id}", staged=sorted(slot.staged),
                                   staging=sorted(slot.staging), serving=len(slot.copies),
                                   source_bytes={k: int(v) for k, v in slot.source_bytes.items()},
                                   peer_bytes={k: int(v) for k, v in slot.peer_bytes.items()})

    # -- the worker protocol ---------------------------------------------------
    def _on_message(self, w: SimWorker, frames: list[bytes]) -> None:
        msg, body = protocol.decode(frames, protocol.WORKER_ORDERS)
        if isinstance(msg, protocol.Heartbeat):
            w.sock.send_multipart(protocol.encode(protocol.Heartbeat()))
            return
        self._touch(w)
        if isinstance(msg, protocol.Batch):
            self.batches += 1
            self.last_batch = time.monotonic()
            self._learn(msg.functions, body)
            w.hints.update(msg.peers)
            w.queue.extend((i, f, a) for (i, f), a in zip(msg.items, body[len(msg.functions):]))
            self.last_batch_of[self.fn_ctx[msg.items[0][1]]] = self.clock()
            if w.current is None:
                self._next(w)
        elif isinstance(msg, protocol.Preload):
            self._learn(msg.functions, body)
            w.hints.update(msg.peers)
            w.preloads.append(msg.context_key)
            if w.current is None:
                self._next(w)
        elif isinstance(msg, protocol.Peers):
            left = w.locating.pop(msg.context_key, None)
            if left is not None:
                self._fetch(w, msg.context_key, left, msg.addresses)
        elif isinstance(msg, protocol.Revoke):
            wanted = set(msg.ids)
            kind = Kind.CANCELLED if msg.reason == "cancel" else Kind.RETURNED
            self.revoked += len(wanted)
            kept = collections.deque()
            for item in w.queue:
                if item[0] in wanted:
                    w.outcomes.append(_bare(item[0], kind))
                else:
                    kept.append(item)
            w.queue = kept
            if msg.reason == "cancel" and w.current is not None and w.current[0] in wanted:
                w.cancelled = True
        elif isinstance(msg, protocol.Retire):
            w.retiring = True
            w.outcomes += [_bare(i, Kind.RETURNED) for i, _, _ in w.queue]
            w.queue.clear()
            if w.current is None and w.preparing is None:
                self._retired(w)
        # Keep: the simulated warm pools never release a context for idleness

    def _learn(self, functions: list[str], body: list[bytes]) -> None:
        for fid, fbody in zip(functions, body):
            self.fn_ctx.setdefault(fid, next(k for k in self.models if k.encode() in fbody))

    def _next(self, w: SimWorker) -> None:
        if w.preparing is not None or w.retiring:
            return  # it goes on once its context is on the GPU
        if w.preloads:
            key = w.preloads.popleft()
            if w.slot.loaded == key:
                w.preloaded.append(key)
                self._touch(w)
            else:
                w.preloading = key
                self._prepare(w, key)
            return
        if not w.queue:
            w.current = None
            if w.slot.idle_from is None:
                w.slot.idle_from = time.monotonic()
            return
        w.slot.idle_until(time.monotonic())
        key = self.fn_ctx[w.queue[0][1]]
        if w.slot.loaded != key:
            w.current = None
            self._prepare(w, key)
            return
        inv_id, fid, args = w.queue.popleft()
        seconds = self.models[key].call * jitter(inv_id) / w.slot.speed
        self.busy["running"] += seconds / self.scale
        w.current = (inv_id, fid, args, w.first_started or time.time())
        w.first_started = None
        w.cancelled = False
        w.started.append(inv_id)
        self._at(time.monotonic() - self.t0 + seconds / self.scale, "done", (w, inv_id))

    # -- moving a context onto the GPU -------------------------------------------
    def _prepare(self, w: SimWorker, key: str) -> None:
        """Park (or drop) what its GPU holds, then wake ``key`` from host memory
        or load it: its files from the node disk, a peer or the shared filesystem,
        then initialisation."""
        slot, started = w.slot, self.clock()
        w.preparing, w.load_started = key, started
        w.first_started = time.time()  # the real loop reports an invocation started before it loads its context
        slot.idle_until(time.monotonic())
        before = 0.0
        if slot.loaded is not None:
            old, slot.loaded = slot.loaded, None
            if self.parking:
                before = self.models[old].size / self.cluster.pcie
                slot.parked.append(old)
                del slot.parked[:-self.host_models]
                self.parks += 1
            w.changed = True
        size = self.models[key].size
        if key in slot.parked:
            slot.parked.remove(key)
            wake = size / self.cluster.pcie
            slot.wakes[key] += 1
            slot.wake_seconds[key] += wake
            self.after(before + wake, lambda: self._ready(w, key, None, started))
        elif key in slot.staged:
            self.after(before + size / self.cluster.disk + self.cluster.init,
                       lambda: self._ready(w, key, "node disk", started))
        else:
            self.after(before, lambda: self._stage(w, key))

    def _stage(self, w: SimWorker, key: str) -> None:
        if w.slot.worker is not w:
            return
        w.slot.staging[key] = []
        w.changed = True
        self._touch(w)
        self._fetch(w, key, self.models[key].size, w.hints.get(key, []))

    def _fetch(self, w: SimWorker, key: str, left: float, peers: list[str]) -> None:
        """Copy ``left`` bytes of ``key``'s files: from the first hinted peer with
        the files and room; else wait for a hinted peer still staging them, or
        for a busy one to finish a copy and then ask again; no peers: the source."""
        if w.slot.worker is not w:
            return
        slots = [s for s in (self.by_address.get(a) for a in peers) if s is not None and not s.gone]
        for peer in slots:
            if key in peer.staged and len(peer.copies) < self.max_serving:
                self._copy(w, key, left, peer)
                return
        staging = next((s for s in slots if key in s.staging), None)
        if staging is not None:
            staging.staging[key].append(lambda: self._fetch(w, key, left, peers))
        elif slots:
            slots[0].freed.append(lambda: self._locate(w, key, left))
        elif peers:
            self._locate(w, key, left)  # every peer it was told of is gone
        else:
            flow = Flow(left, lambda: self._fetched(w, key, left, None, flow))
            w.fetch = (self.shared_fs, flow, None)
            self.shared_fs.add(flow)

    def _drop_fetch(self, w: SimWorker) -> None:
        """Its loop ends (preempted or retired): a copy it was making stops, and
        those waiting for its files look elsewhere."""
        if w.fetch is not None:
            pipe, flow, source = w.fetch
            pipe.remove(flow)
            if source is not None:
                self._end_copy(source, flow)
            w.fetch = None
        for key in [k for k in w.slot.staging if k == w.preparing]:
            for cb in w.slot.staging.pop(key):
                cb()

    def _locate(self, w: SimWorker, key: str, left: float) -> None:
        if w.slot.worker is not w:
            return
        w.locating[key] = left
        w.sock.send_multipart(protocol.encode(protocol.Locate(context_key=key)))

    def _copy(self, w: SimWorker, key: str, left: float, peer: Slot) -> None:
        flow = Flow(left, lambda: self._fetched(w, key, left, peer, flow))

        def lost(remaining: float) -> None:  # the holder was preempted mid-copy
            w.fetch = None
            w.slot.peer_bytes[key] += left - remaining
            self.moved["peers"] += left - remaining
            self._locate(w, key, remaining)

        peer.copies.append((flow, lost))
        w.fetch = (peer.uplink, flow, peer)
        peer.uplink.add(flow)
        self._served(peer)

    def _served(self, peer: Slot) -> None:
        """Its count of copies served changed: its loop says so."""
        if peer.worker is not None:
            peer.worker.changed = True
            self._touch(peer.worker)

    def _end_copy(self, peer: Slot, flow: Flow) -> None:
        """A copy ``peer`` served ended: a fetcher that waited for room looks again."""
        peer.copies = [c for c in peer.copies if c[0] is not flow]
        freed, peer.freed = peer.freed, []
        self._served(peer)
        for cb in freed:
            cb()

    def _fetched(self, w: SimWorker, key: str, size: float, peer: Slot | None, flow: Flow) -> None:
        w.fetch = None
        if peer is None:
            w.slot.source_bytes[key] += size
            self.moved["source"] += size
        else:
            w.slot.peer_bytes[key] += size
            self.moved["peers"] += size
            self._end_copy(peer, flow)
        slot = w.slot
        if slot.gone:
            return
        waiters = slot.staging.pop(key, [])
        slot.staged.add(key)
        w.changed = True
        self._touch(w)
        for cb in waiters:
            cb()
        origin = "shared filesystem" if peer is None else "peer"
        self.after(self.cluster.init, lambda: self._ready(w, key, origin, w.load_started))

    def _ready(self, w: SimWorker, key: str, origin: str | None, started: float) -> None:
        """``key`` is on the GPU: loaded (its files came from ``origin``) or woken (None)."""
        slot = w.slot
        if slot.gone or slot.worker is not w:
            return
        slot.loaded, w.preparing = key, None
        seconds = (self.clock() - started) / self.scale
        self.busy["loading"] += seconds
        self.moves.append((self.clock(), slot.id, key, "wake" if origin is None else "load"))
        if origin is not None:
            self.loads[origin] += 1
            w.inits.append(protocol.InitInfo(context_key=key, description=f"fleet-sim/{self.models[key].name}",
                                             started_at=time.time() - seconds, seconds=seconds))
        else:
            self.moved["woken"] += self.models[key].size
        if w.preloading == key:  # no invocation waited for it
            w.preloaded.append(key)
            w.preloading = w.first_started = None
        w.changed = True
        self._touch(w)
        if w.retiring:
            self._retired(w)
        else:
            self._next(w)

    def _done(self, what: tuple[SimWorker, str]) -> None:
        w, inv_id = what
        if w.slot.gone or w.slot.worker is not w or w.current is None or w.current[0] != inv_id:
            return  # preempted meanwhile
        _, _, args, started = w.current
        if w.cancelled:
            w.outcomes.append(_bare(inv_id, Kind.CANCELLED))
        else:
            w.outcomes.append((OutcomeInfo(id=inv_id, kind=Kind.OK, started=started, finished=time.time()), args))
            self.executed[inv_id] += 1
            w.slot.done += 1
        w.current = None
        self._touch(w)
        if w.retiring:
            self._flush(w)
            self._retired(w)
        else:
            self._next(w)

    def _retired(self, w: SimWorker) -> None:
        """The loop ended; its slot (a worker process, with its GPU's model) takes the next token."""
        self._flush(w)
        self._drop_fetch(w)
        self._close(w)
        self._report(b"ended", w.token, b"retired")
        self._join(w.slot)

    def _flush(self, w: SimWorker) -> None:
        if w.slot.worker is not w or not (w.started or w.outcomes or w.changed):
            return
        changed = w.changed or bool(w.outcomes)
        msg = protocol.Progress(started=w.started, outcomes=[o for o, _ in w.outcomes], inits=w.inits,
                                contexts=self._contexts(w.slot) if changed else None,
                                files=self._files(w.slot) if w.changed else None, preloaded=w.preloaded)
        w.sock.send_multipart(protocol.encode(msg, [p for _, p in w.outcomes]))
        w.started, w.outcomes, w.inits, w.preloaded, w.changed = [], [], [], [], False


def _bare(inv_id: str, kind: Kind) -> tuple[OutcomeInfo, bytes]:
    now = time.time()
    return OutcomeInfo(id=inv_id, kind=kind, started=now, finished=now), b""
