"""Round-trip latency and no-op throughput over ipc://, ssh:// and tcp://.

One local endpoint (W workers) listens on its ipc socket and on a CURVE tcp
port; the ssh:// client reaches the same socket through an OpenSSH tunnel to a
throw-away sshd on loopback (tests/services/sshd.py; or --ssh USER@HOST with
your own keys, where HOST shares this file system). For each transport:
the bare transport's round trip is a ping -> pong (p50 of --rounds); latency
is single submit -> result through the workers, one at a time (p50/p99 of --rounds);
throughput is ``map`` over --n no-ops (the median of --repeats runs). The
three clients take turns, --repeats times, so that a change in the machine's
load during the run falls on all of them alike.

    python benchmarks/transports.py [--rounds 300] [--n 2000] [--repeats 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zmq

from faas import Executor, ctx_function, protocol
from faas.client.transport import open_transport

ROOT = Path(__file__).resolve().parent.parent


@ctx_function(model=dict)
def noop(ctx, x):
    return x


def latencies(ex: Executor, rounds: int) -> list[float]:
    out = []
    for i in range(rounds):
        t0 = time.perf_counter()
        ex.submit(noop, i).result()
        out.append(time.perf_counter() - t0)
    return out


def ping_rtt(options: dict, rounds: int) -> float:
    """p50 ms of ping -> pong on a socket of its own: the transport without the workers."""
    transport = open_transport(**options)
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    try:
        for option, value in transport.socket_options.items():
            sock.setsockopt(option, value)
        sock.connect(transport.address)
        times = []
        for _ in range(rounds + 10):
            t0 = time.perf_counter()
            sock.send_multipart(protocol.encode("ping"))
            sock.recv_multipart()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[10:]) * 1000  # the first ones include the handshake
    finally:
        sock.close(0)
        zctx.term()
        transport.close()


def throughput(ex: Executor, n: int) -> float:
    t0 = time.perf_counter()
    assert list(ex.map(noop, range(n))) == list(range(n))
    return n / (time.perf_counter() - t0)


def measure(executors: dict[str, Executor], rounds: int, n: int, repeats: int) -> list[tuple]:
    """[(transport, p50 ms, p99 ms, invocations/s)] through the workers, the transports taking turns."""
    for ex in executors.values():
        list(ex.map(noop, range(200)))  # warm: workers up, context loaded, function known
    lat: dict[str, list[float]] = {name: [] for name in executors}
    rates: dict[str, list[float]] = {name: [] for name in executors}
    for _ in range(repeats):
        for name, ex in executors.items():
            lat[name] += latencies(ex, rounds // repeats)
            rates[name].append(throughput(ex, n))
    rows = []
    for name in executors:
        cuts = statistics.quantiles(lat[name], n=100)
        rows.append((name, cuts[49] * 1000, cuts[98] * 1000, statistics.median(rates[name])))
    return rows


def start_endpoint(home: Path, workers: int):
    """A running endpoint 'bench' with a tcp listener and this user's client key authorised."""
    os.environ["FAAS_HOME"] = str(home)
    from faas.endpoint import daemon
    from faas.endpoint.access import AuthorizedClients, endpoint_keys
    from faas.home import EndpointDir
    from faas.keys import client_pair

    epdir = EndpointDir.of("bench")
    epdir.path.mkdir(parents=True, mode=0o700)
    epdir.config.write_text(f"""\
engine:
  max_workers_per_node: {workers}
  strategy_period: 0.5
listen: [tcp://127.0.0.1:0]
""")
    AuthorizedClients(epdir.authorized_clients).add(client_pair().public_text, "benchmark")
    daemon.start_background(epdir)
    live = daemon.request(epdir.address, "status")["status"]
    (tcp,) = [a for a in live["addresses"] if a.startswith("tcp://")]
    return epdir, tcp, endpoint_keys(epdir.path).public_text


@contextlib.contextmanager
def ssh_target(args, tmp: Path):
    """(destination with port, ssh options) of an sshd that reaches this machine's files."""
    if args.ssh:
        yield args.ssh, []
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from services.sshd import sshd_server

    with sshd_server(tmp) as server:
        yield f"{server.user}@{server.host}:{server.port}", server.ssh_args()[2:]  # the URL has the port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300, help="single round trips for the latency")
    p.add_argument("--n", type=int, default=2000, help="no-ops per throughput run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ssh", help="USER@HOST[:PORT] instead of a throw-away sshd on loopback")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="faas-bench-"))
    epdir, tcp, server_key = start_endpoint(tmp / "home", args.workers)
    from faas.endpoint import daemon

    try:
        with ssh_target(args, tmp) as (destination, ssh_options), contextlib.ExitStack() as stack:
            clients = {
                "ipc": dict(endpoint="bench"),
                "ssh": dict(endpoint=f"ssh://{destination}/bench", ssh_options=ssh_options,
                            remote_faas_home=str(tmp / "home")),
                "tcp (CURVE)": dict(endpoint=tcp, server_key=server_key),
            }
            pings = {name: ping_rtt(options, args.rounds) for name, options in clients.items()}
            executors = {name: stack.enter_context(Executor(**options)) for name, options in clients.items()}
            rows = measure(executors, args.rounds, args.n, args.repeats)
    finally:
        daemon.stop(epdir)
        shutil.rmtree(tmp, ignore_errors=True)
    rounds = args.rounds // args.repeats * args.repeats
    print(f"{args.workers} workers on {os.cpu_count()} cores; latency over {rounds} single round trips, "
          f"throughput: median of {args.repeats} maps of {args.n} no-ops")
    print(f"{'transport':<12} {'ping p50 ms':>12} {'p50 ms':>8} {'p99 ms':>8} {'invocations/s':>14}")
    for name, p50, p99, rate in rows:
        print(f"{name:<12} {pings[name]:12.3f} {p50:8.2f} {p99:8.2f} {rate:14.0f}")


if __name__ == "__main__":
    main()
