"""What a flood of bad submits from one authorised client costs the others.

One local endpoint (1 worker); a well-behaved client submits a no-op and waits
for its result, one call after another, before, during and after a flood
(tests/clients/flood_submits.py: well-formed submits naming one id twice, or
a function never sent, as fast as the endpoint reads them, replies unread).
Prints the good client's p50/p99 before and during the flood (and their
ratio), the calls that failed, what the flood added to endpoint.log, and the
daemon's RSS before, at its peak, at the flood's end and ``--settle`` seconds
after it.

    python benchmarks/flood.py [--seconds 30] [--settle 30] [--store-url URL] [--junk]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from faas import Executor, ctx_function
from faas.endpoint import daemon
from faas.home import EndpointDir

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


HOG = "import sys, time\nuntil = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < until: pass\nprint(0)"


@ctx_function(model=dict)
def noop(ctx, x):
    return x


def calls(ex: Executor, until, out: list[float], failed: list[str]) -> None:
    """One no-op after another until ``until()``; latencies (s) into ``out``."""
    while not until():
        t0 = time.perf_counter()
        try:
            ex.submit(noop, 1).result(timeout=120)
        except Exception as e:
            failed.append(f"{type(e).__name__}: {e}")
            continue
        out.append(time.perf_counter() - t0)


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the flood lasts")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of calls measured before it")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after it when RSS is read again")
    ap.add_argument("--store-url", default=None)
    ap.add_argument("--junk", action="store_true", help="flood frames that are no message at all instead")
    ap.add_argument("--hog", action="store_true",
                    help="control: instead of the flood, a process that only spins on a core for as long")
    args = ap.parse_args()
    os.environ["FAAS_HOME"] = tempfile.mkdtemp(prefix="faas-flood-")
    epdir = EndpointDir.of("flood")
    epdir.path.mkdir(parents=True)
    store = f"store:\n  url: {args.store_url}\n" if args.store_url else ""
    epdir.config.write_text("engine:\n  max_workers_per_node: 1\n  address: 127.0.0.1\n  strategy_period: 0.5\n"
                            "  provider:\n    type: LocalProvider\n    init_blocks: 1\n    min_blocks: 1\n"
                            f"    max_blocks: 1\nwarm_pool:\n  prewarm: []\n{store}")
    daemon.start_background(epdir)
    proc = psutil.Process(daemon.read_pid(epdir))
    try:
        with Executor(endpoint="flood") as ex:
            ex.submit(noop, 0).result(timeout=120)  # workers up, context loaded
            before: list[float] = []
            failed: list[str] = []
            t_end = time.monotonic() + args.before
            calls(ex, lambda: time.monotonic() > t_end, before, failed)
            rss0, log0 = proc.memory_info().rss, epdir.log.stat().st_size
            lines0 = epdir.log.read_text(errors="replace").count("\n")
            peak = [rss0]
            cpu0 = sum(proc.cpu_times()[:2])
            if args.hog:
                flooder = subprocess.Popen([sys.executable, "-c", HOG, str(args.seconds)], stdout=subprocess.PIPE,
                                           text=True)
            else:
                flooder = subprocess.Popen([sys.executable, str(ROOT / "tests" / "clients" / "flood_submits.py"),
                                            epdir.address, str(args.seconds), *(["junk"] if args.junk else [])],
                                           stdout=subprocess.PIPE, text=True)
            sampling = threading.Event()

            def sample():
                while not sampling.wait(0.1):
                    peak.append(proc.memory_info().rss)

            threading.Thread(target=sample, daemon=True).start()
            during: list[float] = []
            calls(ex, lambda: flooder.poll() is not None, during, failed)
            sent = int(flooder.communicate()[0])
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            rss_end = proc.memory_info().rss
            time.sleep(args.settle)
            sampling.set()
            rss_after = proc.memory_info().rss
            after: list[float] = []
            t_end = time.monotonic() + 3
            calls(ex, lambda: time.monotonic() > t_end, after, failed)
            connects = ex._conn.connects
        grown = epdir.log.stat().st_size - log0
        lines = epdir.log.read_text(errors="replace").count("\n") - lines0
    finally:
        daemon.stop(epdir)
    print(f"{'hog (control)' if args.hog else 'flood'}: {sent} bad submits in {args.seconds:.0f}s "
          f"({sent / args.seconds:.0f}/s); the daemon used {cpu / args.seconds * 100:.0f} % of a core meanwhile")
    print(f"good client: before p50 {pct(before, 0.5):.1f} ms p99 {pct(before, 0.99):.1f} ms ({len(before)} calls); "
          f"during p50 {pct(during, 0.5):.1f} ms p99 {pct(during, 0.99):.1f} ms ({len(during)} calls): "
          f"p50 ratio {statistics.median(during) / statistics.median(before) if during else float('inf'):.2f}x; "
          f"after p50 {pct(after, 0.5):.1f} ms; {len(failed)} calls failed; {connects - 1} reconnections"
          + (f" (first: {failed[0][:200]})" if failed else ""))
    print(f"endpoint.log: +{grown / 1024:.1f} KiB, {lines} lines during the flood and after it")
    print(f"daemon RSS: {rss0 / MiB:.0f} MB before, peak {max(peak) / MiB:.0f} MB, {rss_end / MiB:.0f} MB at the "
          f"flood's end, {rss_after / MiB:.0f} MB {args.settle:.0f}s after ({(rss_after / rss0 - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
