"""Issue #20, "the client keeps the contract": any callable concurrent.futures
takes, an I/O thread that never strands a future, the functions' output in the
client, an endpoint that forgot its work saying so, and a bounded exit. Real
endpoints and workers; one endpoint is shared by the tests that leave it as
they found it."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import operator
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli, local_config, sqlite_locked, started_endpoints

from faas import Executor, ctx_function, protocol
from faas.client.base import FaasExecutor
from faas.client.connection import Connection
from faas.errors import ClientError, EndpointError, InvocationLost
from faas.function import callable_name, unbind
from faas.store import Store, sqlite_url
from faas.warm_pool.output import captured

SHARED = "contract"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One endpoint (two workers) for the module; yields its folder."""
    home = tmp_path_factory.mktemp("faas-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAAS_HOME", str(home))
        endpoints = started_endpoints(home, default_config=local_config)
        ep = next(endpoints)(SHARED)
        yield ep
        next(endpoints, None)


# -- 1. any callable -------------------------------------------------------------
def square(x):
    return x * x


def add3(a, b, c):
    return a + 10 * b + 100 * c


def make_adder(n):
    def adder(x):
        return x + n
    return adder


class Scaler:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x

    def scale(self, x):
        return self.k * x + 1

    @classmethod
    def triple(cls, x):
        return 3 * x

    @staticmethod
    def neg(x):
        return -x


def _load(k):
    return {"k": k}


@ctx_function(model=_load, k=10)
def times_k(ctx, x):
    return ctx["k"] * x


@ctx_function(model=_load, k=10)
def affine(ctx, a, x, b=0):
    return ctx["k"] * a + x + b


XS = list(range(5))
KINDS = [  # (kind, callable, inputs); expected results are the callable's own, called here
    ("function", square, XS), ("lambda", lambda x: x + 1, XS), ("closure", make_adder(5), XS),
    ("builtin", abs, [-x for x in XS]), ("partial", functools.partial(pow, 2), XS),
    ("nested partial", functools.partial(functools.partial(add3, 1), 2), XS),
    ("callable object", Scaler(3), XS), ("bound method", Scaler(4).scale, XS),
    ("classmethod", Scaler.triple, XS), ("staticmethod", Scaler.neg, XS),
    ("itemgetter", operator.itemgetter(1), [(x, -x) for x in XS]),
    ("attrgetter", operator.attrgetter("real"), XS), ("methodcaller", operator.methodcaller("bit_length"), XS),
    ("ctx_function", times_k, XS), ("partial of a ctx_function", functools.partial(affine, 2, b=100), XS),
    ("nested partial of a ctx_function", functools.partial(functools.partial(affine, 3), b=7), XS),
]


def test_every_callable_kind_with_submit_and_map(shared):
    """Each kind x (submit, map, map with chunksize=3), each followed by a plain
    submission (a kind that broke the client would fail it and all after): all
    submitted in that order, then every result checked."""
    cases = []
    with Executor(endpoint=SHARED) as ex:
        for kind, fn, items in KINDS:
            for how in ("submit", "map", "map chunksize=3"):
                if how == "submit":
                    results = [ex.submit(fn, x) for x in items]
                else:  # map submits at once; its iterator is read below
                    results = ex.map(fn, items, timeout=60, chunksize=3 if "3" in how else 1)
                cases.append((kind, how, fn, items, results, ex.submit(square, 12)))
        for kind, how, fn, items, results, after in cases:
            got = [f.result(timeout=60) for f in results] if how == "submit" else list(results)
            assert got == [fn(x) for x in items], (kind, how)  # a ctx_function runs here in a local warm context
            assert after.result(timeout=60) == 144, f"the submission after {kind} with {how}"
    names = _function_names(shared.path)
    assert {"pow", "add3", "Scaler", "Scaler.scale", "itemgetter", "times_k", "affine", "affine[chunk]",
            "pow[chunk]"} <= names, names


def _function_names(folder: Path) -> set[str]:
    store = Store(sqlite_url(folder))
    try:
        return {f["name"] for f in store.functions().values()}
    finally:
        store.close()


def test_names_and_partials_of_ctx_functions():
    assert callable_name(functools.partial(functools.partial(add3, 1), 2)) == "add3"
    assert [callable_name(f) for f in (Scaler(2), Scaler(2).scale, operator.itemgetter(1), len)] == \
        ["Scaler", "Scaler.scale", "itemgetter", "len"]
    base, args, keywords = unbind(functools.partial(functools.partial(affine, 3, b=1), b=7))
    assert (base, args, keywords) == (affine, (3,), {"b": 7})
    assert unbind(functools.partial(pow, 2))[1:] == ((), {})  # a plain partial ships as it is


def test_map_checks_buffersize_as_python_3_14_does():
    ex = FaasExecutor()
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        ex.map(abs, [1], buffersize=2.0)
    with pytest.raises(ValueError, match="buffersize must be None or > 0"):
        ex.map(abs, [1], buffersize=0)


# -- 2. the I/O thread never dies silently ------------------------------------------
def _boom(*args, **kwargs):
    raise OSError("injected fault")


STAGES = {  # where the fault is injected: the client's own functions
    "encode": (protocol, "encode"),
    "send": (Connection, "_send"),
    "receive": (Connection, "_receive"),
    "decode": (protocol, "decode"),
    "callback": (Executor, "_on_results"),
}


def test_a_fault_in_the_io_thread_fails_every_open_future(shared, monkeypatch):
    """In each stage: every open future fails with ClientError (the cause and its
    traceback) within 10 s, new submissions are refused, ``with`` exits."""
    for stage, (owner, name) in STAGES.items():
        t0 = time.monotonic()
        with Executor(endpoint=SHARED) as ex:
            assert ex.submit(abs, -1).result(timeout=60) == 1
            open_ = [ex.submit(time.sleep, 1.5) for _ in range(2)]
            monkeypatch.setattr(owner, name, _boom)
            open_.append(ex.submit(abs, -2))  # sends (encode, send), then its ack comes (receive, decode)
            done, _ = cf.wait(open_, timeout=10)  # and its result (callback)
            ended = time.monotonic() - t0
            assert len(done) == 3, f"{stage}: {3 - len(done)} futures still open after 10 s"
            for fut in open_:
                error = fut.exception()
                assert isinstance(error, ClientError), (stage, error)
                assert isinstance(error.__cause__, OSError) and "injected fault" in error.traceback, stage
            with pytest.raises(ClientError):
                ex.submit(abs, -3)
            monkeypatch.undo()
        print(f"\n{stage}: futures failed and `with` exited {time.monotonic() - t0:.2f}s after the fault "
              f"({ended:.2f}s to fail them)")


def test_a_script_whose_io_thread_fails_still_exits(shared):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "clients" / "io_fault.py"), SHARED],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[1:4] == ["ClientError"] * 3 and lines[4] == "submit: ClientError", proc.stdout
    assert float(lines[0].split()[1]) < 10
    print(f"\nthe script exited {time.monotonic() - t0:.1f}s after it started; {lines[0]}")


# -- 3. the functions' output in the client ------------------------------------------
def chatty(x):
    print(f"hello {x}")
    sys.stderr.write(f"oops {x}\n")
    logging.warning("careful %d", x)
    logging.info("not shown %d", x)
    return x


def megabyte():
    for _ in range(1024):
        print("z" * 1023)
    return "done"


@ctx_function(model=dict, batch_size=4, batch_wait=0.5)
def merged(ctx, xs):
    print(f"merged {xs}")
    return [2 * x for x in xs]


def test_output_is_shown_per_invocation_bounded_prefixed_and_kept(shared, capsys):
    with Executor(endpoint=SHARED) as ex:
        plain = ex.submit(chatty, 7)
        big = ex.submit(megabyte)
        batched = [ex.submit(merged, x) for x in range(4)]
        assert plain.result(timeout=60) == 7 and big.result(timeout=60) == "done"
        assert [f.result(timeout=60) for f in batched] == [0, 2, 4, 6]
        group = ex.task_group_id
    out, err = capsys.readouterr()
    prefix = f"(worker {plain.worker}) "
    assert f"{prefix}hello 7\n" in out and f"{prefix}oops 7\n" in err and f"{prefix}WARNING:root:careful 7\n" in err
    assert "not shown" not in out + err
    assert plain.output == [("stdout", "hello 7\n"), ("stderr", "oops 7\nWARNING:root:careful 7\n")]

    assert big.output[0] == ("stderr", f"[faas: {2**20 - 2**16} bytes of this invocation's output were cut; "
                                       f"the last 65536 follow]\n")
    assert big.output[1:] == [("stdout", ("z" * 1023 + "\n") * 64)]  # the last 64 KiB, no more
    assert out.count(f"(worker {big.worker}) {'z' * 1023}\n") == 64

    calls = [f.output for f in batched]
    for x, output in enumerate(calls):  # each member has the output of the merged call it was part of
        ((stream, text),) = output
        assert stream == "stdout" and text.startswith("merged [") and str(x) in text.split("[")[1]
        assert out.count(f"(worker {batched[x].worker}) {text}") >= 1
    assert any(text.count(",") >= 1 for ((_, text),) in calls), "no call was merged: the test did not test it"

    with Executor(endpoint=SHARED, task_group_id=group, forward_output=False) as again:
        reloaded = {f.task_id: f for f in again.reload_tasks()}
        assert reloaded[plain.task_id].result(timeout=60) == 7
        quiet = again.submit(chatty, 8)
        assert quiet.result(timeout=60) == 8
    out, err = capsys.readouterr()
    assert "hello" not in out and "oops" not in err, "printed with forward_output=False"
    assert quiet.output == [("stdout", "hello 8\n"), ("stderr", "oops 8\nWARNING:root:careful 8\n")]
    assert reloaded[plain.task_id].output == plain.output and reloaded[big.task_id].output == big.output
    assert reloaded[plain.task_id].worker == plain.worker
    report = cli("report", SHARED, "--output", "50").stdout
    assert f"--- {plain.task_id} chatty on {plain.worker}, succeeded" in report
    assert "stdout| hello 7" in report and "stderr| WARNING:root:careful 7" in report


def test_capture_levels_threads_and_restore():
    """The capture itself: a configured level below WARNING reaches it (the root
    logger is lowered for the call, then restored), faas' own threads' records
    do not, and a capture stream left in place (an interrupted restore) is
    looked through: the real stream comes back."""
    root, real_stdout = logging.getLogger(), sys.stdout
    root_level = root.level
    with captured(logging.INFO) as output:
        logging.getLogger("user").info("step %d", 1)
        platform = threading.Thread(target=logging.warning, args=("from the platform",), name="faas-loop-io")
        platform.start()
        platform.join()
        assert root.level <= logging.INFO
        leftover = sys.stdout
    assert output.chunks() == [("stderr", "INFO:user:step 1\n")]
    assert root.level == root_level and sys.stdout is real_stdout
    try:
        sys.stdout = leftover
        with captured() as output:
            print("seen")
        assert sys.stdout is real_stdout and output.chunks() == [("stdout", "seen\n")]
    finally:
        sys.stdout = real_stdout


def test_a_script_ending_without_shutdown_prints_its_functions_output(shared):
    """As CPython's test_interpreter_shutdown: the function's line on the script's own stdout, a clean exit."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "clients" / "print_at_exit.py"), SHARED],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith("(worker ") and line.endswith(") apple"), proc.stdout
    assert proc.stderr == ""


# -- 6. a bounded exit -------------------------------------------------------------
def _ctrl_c_as_in_a_terminal() -> None:
    """A test run in the background (``pytest &``) ignores SIGINT, and so would the
    script it starts: give it the default, which Python turns into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_wait_at_exit_is_bounded_and_ctrl_c_ends_it(shared, tmp_path):
    """Two scripts submit to the endpoint while its store is locked (nothing is
    acknowledged), then raise: one exits within its exit_timeout (3 s) of no
    progress, the other at once when it gets SIGINT during the wait."""
    script = str(ROOT / "tests" / "clients" / "exit_stalled.py")
    with sqlite_locked(shared.path / "store.db"):
        t0 = time.monotonic()
        bounded = subprocess.Popen([sys.executable, script, SHARED, "3", str(tmp_path / "bounded")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        hurried = subprocess.Popen([sys.executable, script, SHARED, "600", str(tmp_path / "hurried")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=_ctrl_c_as_in_a_terminal)
        err_lines: list[str] = []  # read as it comes: the traceback printed says the script is past its code
        reader = threading.Thread(target=lambda: err_lines.extend(hurried.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any("an unrelated bug" in line for line in err_lines):
            assert time.monotonic() < deadline and hurried.poll() is None, err_lines
            time.sleep(0.05)
        time.sleep(1.0)  # into the wait at exit (a Ctrl-C before it would end the traceback's printing)
        interrupted = time.monotonic()
        hurried.send_signal(signal.SIGINT)
        try:
            hurried.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hurried.send_signal(signal.SIGUSR1)  # its threads' stacks, to stderr
            time.sleep(1)
            hurried.kill()
            reader.join(timeout=10)
            pytest.fail("Ctrl-C did not end the wait at exit:\n" + "".join(err_lines))
        after_sigint = time.monotonic() - interrupted
        reader.join(timeout=10)
        out, err = hurried.stdout.read(), "".join(err_lines)
        b_out, b_err = bounded.communicate(timeout=60)
        bounded_took = time.monotonic() - t0
    group = out.strip()
    assert hurried.returncode != 0 and "interrupted (Ctrl-C)" in err and group in err, err
    assert after_sigint < 3, f"{after_sigint:.1f}s after SIGINT"
    b_group = b_out.strip()
    assert "no progress for 3s (exit_timeout)" in b_err and f"task group {b_group}" in b_err, b_err
    assert f"task_group_id={b_group!r}).reload_tasks()" in b_err and "RuntimeError: an unrelated bug" in b_err
    assert "3 were not acknowledged" in b_err
    assert bounded.returncode == 1 and bounded_took < 30, f"{bounded_took:.1f}s"
    print(f"\nstore locked: the script with exit_timeout=3 exited {bounded_took:.1f}s after it started; "
          f"the one given SIGINT {after_sigint:.2f}s after it")


def _wait_running(fut) -> None:
    deadline = time.monotonic() + 60
    while not fut.running():
        assert time.monotonic() < deadline and not fut.done(), "never went RUNNING"
        time.sleep(0.05)


# -- 5. an endpoint that forgot its work says so ------------------------------------
def test_an_endpoint_that_forgot_its_work_says_so(shared):
    """After a restart on an empty store, a client's re-watch names invocations the
    store does not have: they fail with InvocationLost, and the client goes on. A
    store deleted under a running endpoint stops it, and it first tells its
    clients: every open future fails with the cause within 10 s, and new work is
    refused. (Last in the module: it leaves the shared endpoint stopped.)"""
    ep = shared
    before = Executor(endpoint=SHARED)
    waiting = [before.submit(time.sleep, 30) for _ in range(3)]  # two run, one waits
    _wait_running(waiting[0])
    cli("stop", SHARED)
    _delete_store(ep.path)
    ep.start()  # on a new, empty store
    restarted = time.monotonic()
    done, _ = cf.wait(waiting, timeout=30)
    lost_after = time.monotonic() - restarted
    assert len(done) == 3, "futures of invocations the endpoint forgot still wait"
    for fut in waiting:
        with pytest.raises(InvocationLost, match=f"endpoint {SHARED} has no record of 3 invocations"):
            fut.result()

    later = before.submit(time.sleep, 5)  # the client goes on
    with Executor(endpoint=SHARED) as ex:
        open_ = [*(ex.submit(time.sleep, 5) for _ in range(4)), later]
        _delete_store(ep.path)
        deleted = time.monotonic()
        done, _ = cf.wait(open_, timeout=10)
        told_after = time.monotonic() - deleted
        assert len(done) == 5, f"{5 - len(done)} futures still open 10 s after the store was deleted"
        for fut in open_:
            with pytest.raises(EndpointError, match=f"endpoint {SHARED} stopped for good: the store .* is missing"):
                fut.result()
        with pytest.raises(EndpointError, match="stopped for good"):
            ex.submit(abs, -1)
    before.shutdown()
    print(f"\nrestart on an empty store: InvocationLost {lost_after:.1f}s after the restart; store deleted: "
          f"every open future failed {told_after:.1f}s after")


def _delete_store(folder: Path) -> None:
    for name in ("store.db", "store.db-wal", "store.db-shm"):
        (folder / name).unlink(missing_ok=True)
