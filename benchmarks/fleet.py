"""Paper scale on a simulated fleet, through the real daemon.

The daemon runs as it does for users (faas.endpoint.daemon.run: the real
client socket, dispatcher, store and CurveZMQ worker socket) in its own
process, so that its CPU and memory are measured apart; only its engine is
:class:`FleetEngine` instead of Parsl. The fleet (in this process,
:mod:`fleet_workers`) follows a trace of GPU slots joining and leaving: each
slot that holds a loop token runs a simulated worker that speaks the
worker-loop protocol over a real CurveZMQ DEALER socket, but sleeps instead of
running code: moving a context onto its GPU costs what a real cluster charges
(:mod:`cluster`: files from the shared filesystem, a peer or the node's disk,
initialisation, parking and waking over PCIe), then each invocation takes its
time divided by the slot's speed. It returns each invocation's argument blob
as its result, so clients check that every result belongs to its invocation.
A slot that leaves is preempted without goodbye: its socket closes, and for
``end: report`` slots the engine reports the loss (as Parsl does for a lost
block); the others are found by the heartbeat threshold. Clients are separate
processes that submit at once.

All times in traces and models are the paper's (seconds on real GPUs), divided
by ``--scale`` here; the daemon's heartbeat settings are given in scaled time.

    python benchmarks/fleet.py run --trace benchmarks/traces/paper.json -n 150000
    python benchmarks/fleet.py run --trace benchmarks/traces/paper.json -n 150000 --store postgresql
    python benchmarks/fleet.py saturation --sizes 186,372,744,1488 -n 20000
    python benchmarks/fleet.py mobility          # context mobility: peer copy and parking, side by side
    python benchmarks/fleet.py trace paper|harsh > benchmarks/traces/NAME.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import zmq
from cluster import GB, Cluster
from fleet_workers import MODEL_SETS, Fleet, never_called

from faas.function import ctx_function

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STALL_SECONDS = 30.0  # a run where no invocation ends for this long has hung: it fails, saying where


# -- traces -----------------------------------------------------------------------------
def make_trace(kind: str, gpus: int = 186, ramp: float = 300.0, seed: int = 1) -> dict:
    """A trace of GPU slots (paper time, seconds from the start).

    ``paper``: 0 -> ``gpus`` over the first ``ramp`` seconds; 10 % of them are
    preempted once at a random time in the first 2 hours and replaced 1-5
    minutes later. ``harsh``: a third of the fleet is preempted twice (the
    replacement of a preempted slot is preempted again). Half the losses are
    reported by the engine, half are silent (found by the heartbeat)."""
    rng = random.Random(seed)
    slots: list[dict] = []
    ids = itertools.count()

    def slot(join: float, leave: float | None) -> dict:
        s = {"id": next(ids), "speed": round(rng.uniform(0.7, 1.3), 3), "join": round(join, 1),
             "leave": None if leave is None else round(leave, 1), "end": rng.choice(["silent", "report"])}
        slots.append(s)
        return s

    fraction, times = {"paper": (0.10, 1), "harsh": (1 / 3, 2)}[kind]
    preempted = set(rng.sample(range(gpus), round(fraction * gpus)))
    for g in range(gpus):
        join = rng.uniform(0, ramp)
        if g not in preempted:
            slot(join, None)
            continue
        for _ in range(times):
            leave = join + rng.uniform(300.0, 3600.0 if times == 1 else 1800.0)
            slot(join, leave)
            join = leave + rng.uniform(60.0, 300.0)
        slot(join, None)
    return {"name": kind, "gpus": gpus, "slots": slots}


def multiply(trace: dict, factor: int) -> dict:
    """The same trace with every slot repeated ``factor`` times (a fleet ``factor`` times larger)."""
    if factor == 1:
        return trace
    slots = [dict(s, id=s["id"] * factor + k) for s in trace["slots"] for k in range(factor)]
    return {"name": f"{trace['name']}x{factor}", "gpus": trace["gpus"] * factor, "slots": slots}


def peak(trace: dict) -> int:
    """The most slots alive at once: the loops the engine may hold."""
    edges = sorted([(s["join"], 1) for s in trace["slots"]]
                   + [(s["leave"], -1) for s in trace["slots"] if s["leave"] is not None],
                   key=lambda e: (e[0], e[1]))
    best = alive = 0
    for _, d in edges:
        alive += d
        best = max(best, alive)
    return best


def ideal_makespan(trace: dict, work: float, load: float) -> float:
    """Paper time by which the fleet can have done ``work`` speed-1 seconds, each
    slot first spending one ``load``: sum of work over speed-weighted available
    worker-seconds (bisection on T)."""
    def capacity(t: float) -> float:
        return sum(s["speed"] * max(0.0, min(t, s["leave"] if s["leave"] is not None else t) - s["join"] - load)
                   for s in trace["slots"])

    lo, hi = 0.0, 1.0
    while capacity(hi) < work:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if capacity(mid) < work else (lo, mid)
    return hi


# -- the engine, in the daemon's process --------------------------------------------------
class Preempted(Exception):
    """The engine's report of a lost worker (Parsl's is ManagerLost)."""


class FleetEngine:
    """Stands in for ParslEngine: start_loop hands the token and the worker
    socket's keys to the fleet over an ipc PUSH socket; the fleet reports loops
    that ended (retired) or were lost with their slot, which complete the loop's
    Future as Parsl would."""

    def __init__(self, orders: str, reports: str, max_loops: int):
        self.loops_per_block = self.max_loops = max_loops
        self.min_loops = 0
        self.zctx = zmq.Context()
        self.push = self.zctx.socket(zmq.PUSH)
        self.push.connect(orders)
        self.pull = self.zctx.socket(zmq.PULL)
        self.pull.connect(reports)
        self.futures: dict[str, Future] = {}
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="fleet-engine", daemon=True)
        self._reader.start()

    def start_loop(self, token: str, link) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        self.futures[token] = fut
        self.push.send_multipart([token.encode(), link.addresses[0].encode(), link.server_public,
                                  link.client_public, link.client_secret])
        return fut

    def _read(self) -> None:
        while not self._stop.is_set():
            if not self.pull.poll(200):
                continue
            what, token, why = (f.decode() for f in self.pull.recv_multipart())
            fut = self.futures.pop(token, None)
            if fut is None:
                continue
            if what == "lost":
                fut.set_exception(Preempted(why))
            else:
                fut.set_result(why)

    def failure(self) -> BaseException | None:
        return None

    def managers(self) -> list[dict[str, Any]]:
        return []

    def shutdown(self) -> None:
        self._stop.set()
        self._reader.join()
        self.zctx.destroy(linger=0)


def serve(name: str, orders: str, reports: str, max_loops: int, stats_path: str) -> None:
    """The daemon process: the real daemon with a FleetEngine; on exit it writes
    its store transaction count and where its loop thread spent its time."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from faas.endpoint import daemon
    from faas.home import EndpointDir

    commits = collections.Counter()
    event.listen(Engine, "commit", lambda conn: commits.update(["commits"]))  # every engine in this process
    sampler = Sampler(threading.main_thread().ident)
    sampler.start()
    try:
        daemon.run(EndpointDir.of(name), engine_factory=lambda cfg, run_dir: FleetEngine(orders, reports, max_loops))
    finally:
        sampler.stop()
        Path(stats_path).write_text(json.dumps({"commits": commits["commits"], "profile": sampler.shares()}))


class Sampler:
    """Where the daemon's loop thread is, 100 times a second, by the innermost
    frame that tells: store (SQLAlchemy, the driver), socket (zmq, protocol
    decode/encode, pydantic), dispatcher (dispatcher, policy), else server."""

    def __init__(self, ident: int):
        self.ident = ident
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            frame = sys._current_frames().get(self.ident)
            if frame is not None:
                self.counts[self.classify(frame)] += 1

    @staticmethod
    def classify(frame) -> str:
        if frame.f_code.co_name == "poll" and "zmq" in frame.f_code.co_filename:
            return "idle"
        outer = frame
        while outer is not None:  # the dashboard's view, its store reads and its reply's encoding included
            if "faas/endpoint/fleetview" in outer.f_code.co_filename:
                return "dashboard"
            outer = outer.f_back
        while frame is not None:
            f = frame.f_code.co_filename
            if "sqlalchemy" in f or "faas/store" in f or "sqlite" in f or "psycopg" in f:
                return "store"
            if "/zmq/" in f or "pydantic" in f or "faas/protocol" in f:
                return "socket"
            if "faas/endpoint/dispatcher" in f or "faas/endpoint/policy" in f or "faas/endpoint/workers" in f:
                return "dispatcher"
            if "faas/endpoint/server" in f or "faas/endpoint/requests" in f:
                return "server"
            frame = frame.f_back
        return "other"

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values()) or 1
        return {k: round(v / total, 4) for k, v in sorted(self.counts.items())}


# -- clients ----------------------------------------------------------------------------------
def client(name: str, index: int, count: int, go: str, out: str, models: str) -> None:
    """One client process: submit ``count`` claims (the models of set ``models``
    in turn) at once when ``go`` appears; check every result is its own
    invocation's; write figures."""
    from faas.client.executor import Executor

    deliveries: collections.Counter[str] = collections.Counter()

    class CountingExecutor(Executor):
        """Counts every result the endpoint delivers, to catch one delivered twice."""

        def _on_results(self, items, payloads):
            deliveries.update(it.id for it in items)
            super()._on_results(items, payloads)

    functions = [ctx_function(never_called, model=f"fleet-sim/{m.name}") for m in MODEL_SETS[models]]
    ex = CountingExecutor(endpoint=name, batch_size=1024)
    while not os.path.exists(go):
        time.sleep(0.005)
    cpu0 = time.process_time()
    latencies: list[float] = []
    futures = []
    begin = time.monotonic()
    for i in range(count):
        claim = f"claim-{index}-{i}"
        fut = ex.submit(functions[i % len(functions)], claim)
        t = time.monotonic()
        fut.add_done_callback(lambda f, t=t: latencies.append(time.monotonic() - t))
        futures.append((claim, fut))
    submitted = time.monotonic() - begin
    wrong = errors = 0
    for claim, fut in futures:
        try:
            wrong += fut.result() != ((claim,), {})
        except Exception:
            errors += 1
    last = time.monotonic()
    ids = {fut.task_id for _, fut in futures}
    ex.shutdown()
    latencies.sort()
    Path(out).write_text(json.dumps({
        "count": count, "wrong": wrong, "errors": errors, "submit_seconds": submitted,
        "duplicated": sum(1 for i, n in deliveries.items() if i in ids and n > 1),
        "p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)],
        "latencies": latencies[:: max(1, len(latencies) // 2000)], "finished_at": last - begin,
        "cpu_s": time.process_time() - cpu0}))


# -- one run ----------------------------------------------------------------------------------
def config_text(store_url: str | None, heartbeat: tuple[int, int], scale: float, peer_copy: bool = True) -> str:
    """The endpoint's config: its time settings are the paper's divided by ``scale``
    (the default 10 s of work per batch), except the heartbeat, given scaled."""
    store = f"store:\n  url: {json.dumps(store_url)}\n" if store_url else ""
    return f"""\
engine:
  address: 127.0.0.1
  heartbeat_period: {heartbeat[0]}
  heartbeat_threshold: {heartbeat[1]}
  max_idletime: 3600
dispatch:
  max_batch: 64
  max_batch_seconds: {10.0 / scale}
warm_pool:
  peer_copy: {str(peer_copy).lower()}
{store}"""


def run_fleet(trace: dict, invocations: int, clients: int = 3, scale: float = 60.0, store_url: str | None = None,
              heartbeat: tuple[int, int] = (1, 3), log: Callable[[str], None] = print, models: str = "three",
              cluster: Cluster | None = None, peer_copy: bool = True, parking: bool = False,
              dashboard: bool = False) -> dict:
    """One run of ``invocations`` of the ``models`` set over ``trace`` on ``cluster``,
    with or without peer copy (the daemon's ``warm_pool.peer_copy``) and parking
    (each slot's host memory holds three models); returns its figures. ``dashboard``:
    with ``faas dashboard`` attached to the daemon for the whole run (it asks for a
    view every second)."""
    cluster = cluster or Cluster()
    from faas.endpoint.daemon import ping, request
    from faas.home import EndpointDir

    with tempfile.TemporaryDirectory(prefix="faas-fleet-") as tmp:
        tmp = Path(tmp)
        home, name = tmp / "home", "fleet"
        folder = home / "endpoints" / name
        folder.mkdir(parents=True, mode=0o700)
        (folder / "config.yaml").write_text(config_text(store_url, heartbeat, scale, peer_copy))
        env = {**os.environ, "FAAS_HOME": str(home),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        fleet = Fleet(trace, scale, tmp, MODEL_SETS[models], cluster, parking)
        stats_path = tmp / "daemon-stats.json"
        with open(tmp / "daemon.log", "wb") as daemon_log:
            daemon = subprocess.Popen([sys.executable, __file__, "serve", name, fleet.orders_address,
                                       fleet.reports_address, str(peak(trace)), str(stats_path)],
                                      env=env, stdout=daemon_log, stderr=subprocess.STDOUT, cwd=tmp)
        go = tmp / "go"
        procs, procs_dashboard = [], None
        try:
            address = EndpointDir.of(name, home).address
            deadline = time.monotonic() + 60
            while not ping(address, timeout=0.5):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start:\n{(tmp / 'daemon.log').read_text()[-3000:]}")
                time.sleep(0.1)
            if dashboard:
                with open(tmp / "dashboard.log", "wb") as out:
                    procs_dashboard = subprocess.Popen([sys.executable, "-m", "faas.cli", "dashboard", name, "--port",
                                                        "0"], env=env, stdout=out, stderr=subprocess.STDOUT)
            shares = [invocations // clients + (i < invocations % clients) for i in range(clients)]
            procs = [subprocess.Popen([sys.executable, __file__, "client", name, str(i), str(n), str(go),
                                       str(tmp / f"client{i}.json"), models], env=env)
                     for i, n in enumerate(shares)]
            time.sleep(3.0)  # clients connect (imports, handshake) before time zero
            dp = psutil.Process(daemon.pid)
            cpu0, rss_peak, rss0 = sum(dp.cpu_times()[:2]), 0, dp.memory_info().rss
            main0 = _thread_cpu(dp)
            me = psutil.Process()
            sim0 = sum(me.cpu_times()[:2])
            fleet.start()
            go.touch()
            start = time.monotonic()
            samples = []
            last_count, last_change = 0, time.monotonic()
            while any(p.poll() is None for p in procs):
                time.sleep(0.5)
                rss = dp.memory_info().rss
                rss_peak = max(rss_peak, rss)
                samples.append((time.monotonic() - start, sum(dp.cpu_times()[:2]) - cpu0))
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon died:\n{(tmp / 'daemon.log').read_text()[-3000:]}")
                if len(fleet.executed) != last_count:
                    last_count, last_change = len(fleet.executed), time.monotonic()
                elif time.monotonic() - last_change > STALL_SECONDS:
                    st = request(address, "status")["status"]
                    raise RuntimeError(f"no invocation ended for {STALL_SECONDS:.0f}s; backlog {st['backlog']}, "
                                       f"in flight {st['batches_in_flight']}, {len(st['worker_contexts'])} "
                                       f"workers ready, {len(fleet.by_sock)} simulated, {len(fleet.tokens)} "
                                       f"tokens waiting for a slot, {len(fleet.idle)} slots for a token")
                if len(samples) % 20 == 0:
                    log(f"  t={samples[-1][0]:.0f}s daemon cpu {samples[-1][1]:.1f}s rss {rss / 2**20:.0f} MB "
                        f"executed {len(fleet.executed)}/{invocations}")
            makespan = max(json.loads((tmp / f"client{i}.json").read_text())["finished_at"]
                           for i in range(clients))
            slot_time = fleet.time_shares(start + makespan)
            cpu = sum(dp.cpu_times()[:2]) - cpu0
            main_cpu = _thread_cpu(dp) - main0
            sim_cpu = sum(me.cpu_times()[:2]) - sim0
            if any(p.returncode for p in procs):
                raise RuntimeError("a client failed")
            if procs_dashboard is not None and (procs_dashboard.poll() is not None
                                                or "Traceback" in (tmp / "dashboard.log").read_text()):
                raise RuntimeError(f"the dashboard failed:\n{(tmp / 'dashboard.log').read_text()[-3000:]}")
            results = [json.loads((tmp / f"client{i}.json").read_text()) for i in range(clients)]
            store = store_figures(store_url or f"sqlite:///{folder / 'store.db'}", folder)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            if procs_dashboard is not None:
                procs_dashboard.send_signal(signal.SIGTERM)
                procs_dashboard.wait(30)
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
            fleet.stop()
        dstats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        losses = [line for line in (tmp / "daemon.log").read_text(errors="replace").splitlines() if "lost with" in line]
    work = sum(invocations / len(MODEL_SETS[models]) * m.call for m in MODEL_SETS[models])
    ideal = ideal_makespan(trace, work, 0.0) / scale  # loads free
    latencies = sorted(x for r in results for x in r["latencies"])
    return {
        "trace": trace["name"], "workers": trace["gpus"], "slots": len(trace["slots"]), "invocations": invocations,
        "store": "postgresql" if store_url else "sqlite", "scale": scale, "dashboard": dashboard,
        "makespan": makespan, "ideal": ideal, "ratio": makespan / ideal,
        "lost": invocations - store["succeeded"] + sum(r["wrong"] + r["errors"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results) + store["extra_rows"],
        "reexecuted": sum(n - 1 for n in fleet.executed.values()),
        "lost_silent": sum("silent for" in line for line in losses),
        "lost_unreachable": sum("unreachable" in line for line in losses),
        "lost_reported": sum("silent for" not in line and "unreachable" not in line for line in losses),
        "lost_on_preemption": fleet.lost_running, "revoked": fleet.revoked,
        "loads": store["inits"], "loads_min": sum(1 for s in fleet.slots if s.done),
        "models": models, "peer_copy": peer_copy, "parking": parking, "shared_fs": cluster.shared_fs,
        "loads_by_origin": dict(fleet.loads), "bytes": dict(fleet.moved), "parks": fleet.parks,
        "moves": fleet.moves, "last_batch_of": {fleet.models[k].name: t for k, t in fleet.last_batch_of.items()},
        "model_bytes": sum(m.size for m in MODEL_SETS[models]),
        "idle_joined": [s.id for s in fleet.slots if s.spawned and not s.done],
        "daemon_cpu_s": cpu, "daemon_cpu_share": cpu / makespan, "loop_thread_cpu_s": main_cpu,
        "simulator_cpu_share": sim_cpu / makespan, "clients_cpu_share": sum(r["cpu_s"] for r in results) / makespan,
        "cpu_per_invocation_ms": 1000 * cpu / invocations,
        "decisions_per_s": fleet.batches / makespan, "commits_per_s": dstats.get("commits", 0) / makespan,
        "store_mb": store["bytes"] / 2**20, "rss_mb": rss_peak / 2**20, "rss_start_mb": rss0 / 2**20,
        "p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)],
        "throughput": invocations / makespan, "fleet_lag_ms": 1000 * sum(fleet.late) / max(1, len(fleet.late)),
        "fleet_lag_p99_ms": 1000 * sorted(fleet.late)[int(len(fleet.late) * 0.99)] if fleet.late else 0.0,
        "profile": dstats.get("profile", {}), "slot_time": slot_time,
        "cpu_samples": samples[:: max(1, len(samples) // 50)],
    }


def _thread_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the daemon's main thread (its loop): the rest is ZeroMQ's I/O thread (CurveZMQ), the monitor."""
    return next(t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid)


def store_figures(url: str, folder: Path) -> dict:
    """What the store holds after a run: final states, rows, context loads, size."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM invocations GROUP BY state")).all())
        rows = conn.execute(text("SELECT count(*), count(DISTINCT id) FROM invocations")).one()
        inits = conn.execute(text("SELECT count(*) FROM context_inits")).scalar()
        if engine.url.get_backend_name() == "postgresql":
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        else:
            size = sum(p.stat().st_size for p in folder.glob("store.db*"))
    engine.dispose()
    return {"succeeded": states.get("succeeded", 0), "states": states, "extra_rows": rows[0] - rows[1],
            "inits": inits, "bytes": size}


def report(r: dict) -> str:
    p = r["profile"]
    return (f"{r['trace']} {r['workers']} workers ({r['slots']} slots), {r['invocations']} invocations, "
            f"{r['store']}, scale {r['scale']:g}x{', a dashboard attached' if r.get('dashboard') else ''}\n"
            f"  makespan {r['makespan']:.1f}s vs ideal {r['ideal']:.1f}s: {r['ratio']:.3f}x\n"
            f"  lost {r['lost']}, duplicated {r['duplicated']} (re-executed after preemption: {r['reexecuted']}, "
            f"on preempted slots: {r['lost_on_preemption']}, taken back: {r['revoked']}; loops lost holding work: "
            f"{r['lost_reported']} reported by the engine, {r['lost_unreachable']} unreachable (socket closed), "
            f"{r['lost_silent']} silent past the heartbeat threshold)\n"
            f"  context loads {r['loads']} vs minimum {r['loads_min']} (one per worker that ran work; files from: "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["loads_by_origin"].items()))
            + f"); workers that joined but ran nothing: {len(r['idle_joined'])}\n"
            f"  bytes from the shared filesystem {r['bytes'].get('source', 0) / GB:.0f} GB "
            f"({r['bytes'].get('source', 0) / r['model_bytes']:.2f} copies of the models), from peers "
            f"{r['bytes'].get('peers', 0) / GB:.0f} GB; parked {r['parks']}x, woken "
            f"{r['bytes'].get('woken', 0) / GB:.0f} GB\n"
            f"  daemon CPU {r['daemon_cpu_s']:.1f}s = {100 * r['daemon_cpu_share']:.1f}% of a core "
            f"(loop thread {r['loop_thread_cpu_s']:.1f}s), {r['cpu_per_invocation_ms']:.3f} ms/invocation\n"
            f"  {r['throughput']:.0f} invocations/s, {r['decisions_per_s']:.1f} decisions (batches)/s, "
            f"{r['commits_per_s']:.1f} store commits/s, store {r['store_mb']:.1f} MB\n"
            f"  daemon RSS {r['rss_start_mb']:.0f} MB at start, {r['rss_mb']:.0f} MB peak; "
            f"submit->result p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s\n"
            f"  simulator lag (invocation ends handled late) mean {r['fleet_lag_ms']:.1f} ms, "
            f"p99 {r['fleet_lag_p99_ms']:.1f} ms; CPU of the simulator {100 * r['simulator_cpu_share']:.0f}%, "
            f"of the clients {100 * r['clients_cpu_share']:.0f}% of a core (the machine has {os.cpu_count()})\n"
            f"  daemon loop thread: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in p.items()) + "\n"
            "  the slots' time: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["slot_time"].items()))


def _postgres(stack) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from services.postgres import postgres_server

    return stack.enter_context(postgres_server(tempfile.mkdtemp(prefix="faas-fleet-pg-")))


# -- context mobility: the same fleet with and without peer copy and parking --------------------
def mobility(trace: dict, scenarios: str, fs: list[float], n_a: int, n_b: int, scale_a: float, scale_b: float,
             json_path: str | None) -> None:
    """(a) the paper's 13-minute shape: single-claim invocations of about 1 s,
    one 16 GB model, at each shared-filesystem bandwidth in ``fs``; (b) the
    three-model trace, with parking (GPU memory for one model, host memory for
    three). Each without, then with, peer copy (and parking), side by side."""
    runs: dict[str, list[dict]] = {}
    for bandwidth in fs if "a" in scenarios else ():
        name = f"(a) one 16 GB model, 1 s claims, shared filesystem {bandwidth:g} GB/s"
        runs[name] = [run_fleet(trace, n_a, scale=scale_a, models="one", cluster=Cluster(shared_fs=bandwidth * GB),
                                peer_copy=peer, log=lambda _: None) for peer in (False, True)]
    if "b" in scenarios:
        name = f"(b) three models (2, 6, 16 GB), 8-32 s claims, shared filesystem {fs[0]:g} GB/s"
        runs[name] = [run_fleet(trace, n_b, scale=scale_b, models="three", cluster=Cluster(shared_fs=fs[0] * GB),
                                peer_copy=on, parking=on, log=lambda _: None) for on in (False, True)]
    print(f"\n{trace['name']} trace, {trace['gpus']} GPUs ({len(trace['slots'])} slots); each slot a node of its "
          f"own; {Cluster().describe().split(', ', 1)[1]}; peers serve 2 copies at once (warm_pool.max_serving)\n")
    for name, pair in runs.items():
        print(name)
        print(mobility_table(pair) + "\n", flush=True)
        if json_path:
            with open(json_path, "a") as f:
                f.writelines(json.dumps(dict(r, scenario=name)) + "\n" for r in pair)


def mobility_table(pair: list[dict]) -> str:
    """Without and with peer copy (and parking), in paper time."""
    def row(label: str, cell: Callable[[dict], str]) -> str:
        return f"  {label:<44} " + " ".join(f"{cell(r):>28}" for r in pair)

    def loads(r: dict) -> str:
        by = r["loads_by_origin"]
        return (f"{r['loads']} ({by.get('shared filesystem', 0)}/{by.get('peer', 0)}/{by.get('node disk', 0)}) "
                f"vs {r['loads_min']}")

    head = ["without peer copy" + (", parking" if pair[0]["models"] == "three" else ""),
            "with peer copy" + (" and parking" if pair[1]["parking"] else "")]
    return "\n".join([
        f"  {'':<44} " + " ".join(f"{h:>28}" for h in head),
        row("makespan (paper s)", lambda r: f"{r['makespan'] * r['scale']:.0f}"),
        row("ideal with free loads (paper s)", lambda r: f"{r['ideal'] * r['scale']:.0f}"),
        row("makespan / ideal", lambda r: f"{r['ratio']:.3f}x"),
        row("bytes from the shared filesystem",
            lambda r: f"{r['bytes'].get('source', 0) / GB:.0f} GB = "
                      f"{r['bytes'].get('source', 0) / r['model_bytes']:.2f} copies"),
        row("bytes from peers", lambda r: f"{r['bytes'].get('peers', 0) / GB:.0f} GB"),
        row("loads (files from FS/peer/disk) vs min", loads),
        row("parked / woken", lambda r: f"{r['parks']} / {r['bytes'].get('woken', 0) / GB:.0f} GB"),
        row("slots' time loading / idle while queued",
            lambda r: f"{100 * r['slot_time']['loading']:.1f} / "
                      f"{100 * r['slot_time']['idle while work was queued']:.1f} %"),
        row("lost / duplicated", lambda r: f"{r['lost']} / {r['duplicated']}"),
        row("daemon CPU (% of a core), scale", lambda r: f"{100 * r['daemon_cpu_share']:.0f} %, {r['scale']:g}x"),
    ])


def main() -> None:
    import contextlib
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: every thread's stack, to see where a run hangs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace")
    t.add_argument("kind", choices=["paper", "harsh"])
    for cmd in ("run", "saturation"):
        p = sub.add_parser(cmd)
        p.add_argument("--trace", default=str(HERE / "traces" / "paper.json"))
        p.add_argument("-n", "--invocations", type=int, default=150_000)
        p.add_argument("--clients", type=int, default=3)
        p.add_argument("--scale", type=float, default=60.0)
        p.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
        p.add_argument("--json", help="append the figures to this file (one JSON object a line)")
        p.add_argument("--dashboard", action="store_true", help="with `faas dashboard` attached for the run")
    sub.choices["saturation"].add_argument("--sizes", default="186,372,744,1488")
    sub.choices["saturation"].add_argument("--plot", default=str(HERE / "fleet_saturation.png"))
    m = sub.add_parser("mobility", help="context mobility: each scenario with and without peer copy (and parking)")
    m.add_argument("--trace", default=str(HERE / "traces" / "paper.json"))
    m.add_argument("--scenarios", default="ab", help="a, b or ab")
    m.add_argument("--fs", default="2,20", help="shared filesystem GB/s for (a); (b) runs at the first")
    m.add_argument("--n-a", type=int, default=150_000)
    m.add_argument("--n-b", type=int, default=150_000)
    m.add_argument("--scale-a", type=float, default=4.0, help="(a)'s 1 s claims need a slower clock than (b)'s")
    m.add_argument("--scale-b", type=float, default=60.0)
    m.add_argument("--json", help="append the figures to this file (one JSON object a line)")
    for cmd, n in (("serve", 5), ("client", 6)):
        s = sub.add_parser(cmd)
        s.add_argument("args", nargs=n)
    a = ap.parse_args()
    if a.cmd == "trace":
        print(json.dumps(make_trace(a.kind), indent=0))
        return
    if a.cmd == "serve":
        name, orders, reports, loops, stats = a.args
        return serve(name, orders, reports, int(loops), stats)
    if a.cmd == "client":
        name, index, count, go, out, models = a.args
        return client(name, int(index), int(count), go, out, models)
    trace = json.loads(Path(a.trace).read_text())
    if a.cmd == "mobility":
        return mobility(trace, a.scenarios, [float(x) for x in a.fs.split(",")], a.n_a, a.n_b, a.scale_a,
                        a.scale_b, a.json)
    with contextlib.ExitStack() as stack:
        url = _postgres(stack) if a.store == "postgresql" else None
        if a.cmd == "run":
            runs = [run_fleet(trace, a.invocations, a.clients, a.scale, url, dashboard=a.dashboard)]
        else:
            runs = []
            for size in (int(s) for s in a.sizes.split(",")):
                r = run_fleet(multiply(trace, max(1, round(size / trace["gpus"]))), a.invocations, a.clients,
                              a.scale, url)
                print(report(r), flush=True)
                runs.append(r)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
            plot(runs, a.plot)
    for r in runs if a.cmd == "run" else ():
        print(report(r), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


def plot(runs: list[dict], path: str) -> None:
    """Throughput and daemon CPU against fleet size: the daemon saturates where
    throughput stops following the fleet's demand and its CPU nears one core."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["workers"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(sizes, [r["throughput"] for r in runs], "o-", label="invocations/s (measured)")
    ax.plot(sizes, [r["invocations"] / r["ideal"] for r in runs], "s--", label="invocations/s (trace's ideal)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("simulated workers (GPUs)")
    ax.set_ylabel("invocations/s")
    ax2 = ax.twinx()
    ax2.plot(sizes, [100 * r["daemon_cpu_share"] for r in runs], "^:", color="tab:red", label="daemon CPU %")
    ax2.plot(sizes, [100 * (1 - r["profile"].get("idle", 0.0)) for r in runs], "v:", color="tab:purple",
             label="daemon loop thread busy %")
    ax2.plot(sizes, [100 * r["simulator_cpu_share"] for r in runs], "x:", color="tab:gray",
             label="simulator CPU %")
    ax2.set_ylabel("% of one core")
    ax2.set_ylim(0, max(110, 10 + max(100 * r["daemon_cpu_share"] for r in runs)))
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="upper left")
    ax.set_title(f"faas daemon on a simulated fleet ({runs[0]['invocations']} invocations, "
                 f"{runs[0]['scale']:g}x time)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
