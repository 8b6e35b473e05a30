"""Fault injection: thousands of invocations while worker processes are
SIGKILLed at random, a whole worker pool is killed and the daemon itself is
SIGKILLed and restarted. Nothing may be lost, nothing recorded twice, and a
context may be initialised again only in a replacement worker."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

from conftest import RunningEndpoint, local_config, status, write_config

from faas import Executor, ctx_function

N = 2000
CALL = 0.01


def _pid_logging_loader(log):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid()}


def _work(ctx, x):
    time.sleep(CALL)
    return 2 * x + 1


class Killer(threading.Thread):
    """Kills, on a schedule, a random worker, a whole worker pool, or the daemon."""

    SCHEDULE = [(1.5, "worker"), (3.0, "worker"), (5.0, "pool"), (8.0, "daemon"), (11.0, "worker"),
                (13.0, "worker")]

    def __init__(self, ep: RunningEndpoint, init_log):
        super().__init__(daemon=True)
        self.ep, self.init_log = ep, init_log
        self.done = threading.Event()
        self.kills: Counter = Counter()
        self.rng = random.Random(7)

    def run(self):
        t0 = time.monotonic()
        for at, kind in self.SCHEDULE:
            if self.done.wait(max(0.0, t0 + at - time.monotonic())):
                return
            if getattr(self, f"kill_{kind}")():
                self.kills[kind] += 1

    def _live_workers(self):
        initialised = set(self.init_log.read_text().split())
        return [p for p in self.ep.session() if str(p.pid) in initialised]

    def kill_worker(self) -> bool:
        workers = self._live_workers()
        if not workers:
            return False
        os.kill(self.rng.choice(workers).pid, signal.SIGKILL)
        return True

    def kill_pool(self) -> bool:
        pools = [p for p in self.ep.session() if "process_worker_pool" in " ".join(p.cmdline())]
        if not pools:
            return False
        for p in [pools[0], *pools[0].children(recursive=True)]:
            p.kill()
        return True

    def kill_daemon(self) -> bool:
        os.kill(self.ep.pid, signal.SIGKILL)
        time.sleep(0.5)
        self.ep.start()  # the client reconnects by itself and resends what was not acknowledged
        return True


def test_nothing_lost_or_duplicated_under_kills(faas_home, tmp_path):
    write_config(faas_home, "faults", local_config(workers=2, max_batch=16, heartbeat=(1, 3),
                                                   extra="  max_attempts: 20\n"))
    ep = RunningEndpoint(faas_home, "faults")
    ep.start()
    init_log = tmp_path / "inits.log"
    fn = ctx_function(model=_pid_logging_loader, log=str(init_log))(_work)
    ex = Executor(endpoint="faults")
    killer = Killer(ep, init_log)
    try:
        t0 = time.perf_counter()
        assert list(ex.map(fn, range(N))) == [2 * x + 1 for x in range(N)]
        baseline = time.perf_counter() - t0

        received = Counter()
        t0 = time.perf_counter()
        futures = [ex.submit(fn, x) for x in range(N, 2 * N)]
        for fut in futures:
            fut.add_done_callback(lambda f: received.update([f.task_id]))
        killer.start()
        results = [f.result(timeout=300) for f in futures]
        faulty = time.perf_counter() - t0
        killer.done.set()
        killer.join()
    finally:
        ex.shutdown(cancel_futures=True)
        ep.stop()

    assert results == [2 * x + 1 for x in range(N, 2 * N)]
    assert killer.kills["pool"] == 1 and killer.kills["daemon"] == 1 and killer.kills["worker"] >= 2, killer.kills
    assert len(received) == N and set(received.values()) == {1}
    counts = status("faults")["invocations"]
    assert counts == {"pending": 0, "dispatched": 0, "succeeded": 2 * N, "failed": 0, "cancelled": 0}
    inits = Counter(init_log.read_text().split())
    assert set(inits.values()) == {1}, f"a worker process initialised its context twice: {inits}"
    kills = sum(killer.kills.values())
    print(f"\nfaults: {N} invocations; kills {dict(killer.kills)}; lost 0; duplicated 0; "
          f"context inits {len(inits)} ({len(inits) - 2} in replacement workers); "
          f"makespan {faulty:.1f}s vs {baseline:.1f}s without faults: {(faulty - baseline) / kills:.2f}s per kill")
