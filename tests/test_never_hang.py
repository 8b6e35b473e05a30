"""Issue #12, "never hang, never drop": peers, intake and memory, each against
a real daemon. Every future ends within a stated time, with its result or the
stated error; nothing recorded is lost or run twice; the daemon serves a
healthy client during and after."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest
import zmq
from conftest import ROOT, cli, local_config, status

from faas import Executor, ctx_function, protocol
from faas.endpoint.cli import endpoint_status
from faas.errors import NotAuthorised, PayloadTooLarge
from faas.home import EndpointDir

MiB = 2**20


@ctx_function(model=dict)
def double(ctx, x):
    return 2 * x


@ctx_function(model=dict)
def length(ctx, blob):
    return len(blob)


@ctx_function(model=dict)
def nap(ctx, seconds):
    time.sleep(seconds)
    return seconds


def healthy(name: str, n: int = 10, timeout: float = 60) -> None:
    """A well-behaved ipc client gets all its results within ``timeout``."""
    with Executor(endpoint=name) as ex:
        assert list(ex.map(double, range(n), timeout=timeout)) == [2 * x for x in range(n)]


def counts(name: str) -> dict[str, int]:
    return endpoint_status(EndpointDir.of(name))["invocations"]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(0.2)


def log_text(ep) -> str:
    return (ep.path / "endpoint.log").read_text(errors="replace")


def test_a_revoked_client_that_only_waits_is_told(endpoint, tmp_path):
    """Its open futures raise NotAuthorised within 10 s of the revocation; the
    work still finishes, recorded once."""
    ep = endpoint("rev", local_config(workers=2, extra="listen: [tcp://127.0.0.1:0]\n"))
    info = status("rev")
    (address,) = [a for a in info["addresses"] if a.startswith("tcp://")]
    out = subprocess.run([sys.executable, "-m", "faas.cli", "keygen"], capture_output=True, text=True, check=True,
                         env={**os.environ, "FAAS_HOME": str(tmp_path / "laptop")}).stdout
    public, secret = out.strip(), tmp_path / "laptop" / "keys" / "client.key_secret"
    cli("authorize", "rev", public)
    before = counts("rev").get("succeeded", 0)
    ex = Executor(endpoint=address, server_key=info["public_key"], client_key=secret)
    futures = [ex.submit(nap, 6) for _ in range(2)]
    try:
        wait_for(lambda: all(f.running() for f in futures), 60, "both invocations running")
        cli("revoke", "rev", public)
        revoked = time.monotonic()
        for fut in futures:
            with pytest.raises(NotAuthorised, match="no longer authorised"):
                fut.result(timeout=10)
        told = time.monotonic() - revoked
        assert told < 10
        with pytest.raises(NotAuthorised):
            ex.submit(nap, 0)
    finally:
        for fut in futures:
            fut.interrupt()  # a message from a revoked key is refused: a failed check cannot hang here
        ex.shutdown(cancel_futures=True)
    healthy("rev")  # while the revoked client's work still runs
    wait_for(lambda: counts("rev").get("succeeded", 0) == before + 2 + 10, 60, "the revoked client's work recorded")
    assert ep.running()
    print(f"revoked client told after {told:.1f}s")


@pytest.mark.parametrize("n, limits, why", [
    (1500, "buffer_messages: 8\n  buffer_bytes: 1MiB", "over"),  # over its buffers
    (300, "stall_timeout: 2", "nothing taken for"),  # within them, but not moving
], ids=["over-buffers", "stalled"])
def test_a_paused_client_is_told_to_reload_and_gets_every_result(endpoint, tmp_path, n, limits, why):
    """Paused (SIGSTOP) while results pile up past its small buffers, or wait
    unread for stall_timeout, it is told to reload, and once continued it gets
    all of them, each run once."""
    size = 32 * 1024
    ep = endpoint("slow", local_config(workers=2, max_batch=8, extra=f"clients:\n  send_hwm: 4\n  {limits}\n"))
    runs = tmp_path / "runs.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "clients" / "slow_reader.py"), "slow", str(runs),
                             str(n), str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED or proc.poll() is not None,
                 120, "the client paused itself")
        assert proc.poll() is None, proc.communicate()
        wait_for(lambda: counts("slow").get("succeeded", 0) >= n, 180, "all its work done while it is paused")
        wait_for(lambda: f"fell behind ({why}" in log_text(ep), 30, "the paused client's messages dropped")
        healthy("slow")  # served while the paused client's messages are dropped
        os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=150)  # its futures wait at most 120 s
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    ok, got, total, waited = stdout.split()
    assert (ok, int(got), int(total)) == ("ok", n, n * (n - 1) // 2)
    assert sorted(map(int, runs.read_text().split())) == list(range(n)), "an invocation ran twice or never"
    assert counts("slow")["succeeded"] == n + 10
    print(f"paused client: all {n} results {waited}s after it was continued")


FLOOD = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.DEALER)
sock.connect(sys.argv[1])
until, sent = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < until:
    sock.send_multipart([b"junk", b"%d" % sent])
    sent += 1
print(sent)
"""


def test_junk_on_the_ipc_socket_does_not_starve_a_good_client(endpoint):
    """A junk flood: the good client's calls all finish (p99 well under 5 s)
    and the daemon logs a few summary lines, not one per bad message."""
    seconds = 10.0
    ep = endpoint("junk", local_config(workers=1))
    healthy("junk")  # warm: the context is loaded
    before = log_text(ep).count("bad message")
    flooder = subprocess.Popen([sys.executable, "-c", FLOOD, f"ipc://{ep.path / 'endpoint.sock'}", str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    latencies = []
    try:
        with Executor(endpoint="junk") as ex:
            time.sleep(1)
            while flooder.poll() is None:
                t0 = time.monotonic()
                assert ex.submit(double, 1).result(timeout=30) == 2
                latencies.append(time.monotonic() - t0)
        sent = int(flooder.communicate(timeout=30)[0])
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"junk flood: {sent / seconds:.0f} messages/s; good client: {len(latencies)} calls, "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert sent > 1000, "the flood was no flood"
    assert p99 < 5
    lines = log_text(ep).count("bad message") - before
    assert lines <= seconds / 10 + 3, f"{lines} warnings for {sent} bad messages"
    healthy("junk")


def test_a_message_over_the_whole_message_cap_is_refused_without_being_held(endpoint):
    """25 frames of 4 MiB, each under the per-frame limit, 100 MiB in all: refused
    (too_large, naming its invocations) within 10 s, nothing recorded, the
    daemon's memory back near where it was. Clients split their submissions
    to fit the cap."""
    ep = endpoint("big", local_config(workers=1, extra=(
        f"max_payload_bytes: {4 * MiB}\nclients:\n  max_message_bytes: 8MiB\n")))
    healthy("big")
    before = counts("big")
    daemon = psutil.Process(ep.pid)
    base = daemon.memory_info().rss
    peak = [base]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            with contextlib.suppress(psutil.Error):
                peak.append(daemon.memory_info().rss)
            time.sleep(0.01)

    fid, ids = uuid.uuid4().hex, [uuid.uuid4().hex for _ in range(24)]
    header = protocol.Submit(group=uuid.uuid4().hex,
                             functions=[protocol.FunctionInfo(id=fid, name="f", context_key="k", context="c")],
                             invocations=[protocol.InvocationRef(id=i, function=fid) for i in ids])
    frame = b"\0" * (4 * MiB)
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    threading.Thread(target=sample, daemon=True).start()
    try:
        sock.connect(f"ipc://{ep.path / 'endpoint.sock'}")
        t0 = time.monotonic()
        sock.send_multipart(protocol.encode(header, [frame] * 25))
        assert sock.poll(10_000), "no answer within 10 s"
        reply, _ = protocol.decode(sock.recv_multipart(), protocol.CLIENT_REPLIES)
        answered = time.monotonic() - t0
        time.sleep(1)
    finally:
        sampling.set()
        sock.close(0)
        zctx.term()
    assert (reply.type, reply.code, sorted(reply.ids)) == ("error", "too_large", sorted(ids))
    assert "max_message_bytes" in reply.message
    after = daemon.memory_info().rss
    print(f"100 MiB message refused in {answered:.2f}s; daemon RSS {base / MiB:.0f} -> peak "
          f"{max(peak) / MiB:.0f} -> {after / MiB:.0f} MiB")
    assert after - base < 40 * MiB
    assert max(peak) - base < 150 * MiB  # what ZeroMQ itself holds, once: no copies
    assert counts("big") == before
    with Executor(endpoint="big") as ex:
        with pytest.raises(PayloadTooLarge):  # one payload over max_payload_bytes: the client refuses it
            ex.submit(double, b"x" * (5 * MiB))
        fn, fid, body = ex._function(length)
        chunks = ex._chunks([(fn, fid, body, None, b"\0" * (3 * MiB)) for _ in range(5)])
        assert len(chunks) > 1 and all(len(chunk) * 3 * MiB + len(body) < 8 * MiB for chunk in chunks)
        assert list(ex.map(length, [b"\0" * (3 * MiB)] * 5, timeout=60)) == [3 * MiB] * 5
    healthy("big")


def _closure(i: int, size: int):
    blob = os.urandom(size)

    def holds_a_blob(x):
        import psutil

        return i, x + len(blob), psutil.Process().memory_info().rss

    return holds_a_blob


def test_function_bodies_are_evicted_on_both_sides(endpoint):
    """Ten functions closing over 12 MiB each, with a 24 MiB function cache: the
    daemon's and the worker's memory stay bounded, and an evicted function
    still runs right (sent again)."""
    n, size = 10, 12 * MiB
    ep = endpoint("bodies", local_config(workers=1, extra="warm_pool:\n  function_cache_bytes: 24MiB\n"))
    daemon = psutil.Process(ep.pid)
    with Executor(endpoint="bodies") as ex:
        first = _closure(0, size)
        assert ex.submit(first, 1).result(timeout=60)[:2] == (0, 1 + size)
        base = daemon.memory_info().rss
        worker = []
        for i in range(1, n):
            i_, value, rss = ex.submit(_closure(i, size), 1).result(timeout=60)
            assert (i_, value) == (i, 1 + size)
            worker.append(rss)
        grown = daemon.memory_info().rss - base
        again = ex.submit(first, 2).result(timeout=60)  # evicted on both sides by now
        assert again[:2] == (0, 2 + size)
    print(f"{n} functions of {size // MiB} MiB: daemon RSS +{grown / MiB:.0f} MiB, "
          f"worker RSS {worker[0] / MiB:.0f} -> {worker[-1] / MiB:.0f} MiB")
    assert grown < 60 * MiB  # kept for ever, they were 108 MiB more
    assert worker[-1] - worker[0] < 80 * MiB
    assert "Traceback" not in log_text(ep)


def test_a_clean_stop_leaves_no_bad_file_descriptor(endpoint):
    """Parsl's callbacks fire while the engine shuts down; the wake pipe must
    outlive them (they once wrote to its closed fd)."""
    ep = endpoint("stop", local_config(workers=2))
    with Executor(endpoint="stop") as ex:
        futures = [ex.submit(nap, 0.2) for _ in range(4)]
        assert [f.result(timeout=60) for f in futures] == [0.2] * 4
    ep.stop()
    text = log_text(ep)
    assert "stopped" in text
    assert "Errno 9" not in text and "Bad file descriptor" not in text, text[-3000:]
