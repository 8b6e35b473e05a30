"""Issue #12's rows about what user code hands back, against a real daemon:
a BaseException raised by user code (SystemExit, KeyboardInterrupt) is that
invocation's own error, not a lost worker; a result the client cannot unpickle
fails only its own future. Batch mates succeed, nothing runs twice."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from conftest import local_config

from faas import Executor, ctx_function
from faas.errors import SerializationError


@ctx_function(model=dict, batch_size=1)
def behave(ctx, x, log):
    """Raises a BaseException for some inputs; logs every run."""
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == "exit":
        raise SystemExit("user code called sys.exit")
    if x == "interrupt":
        raise KeyboardInterrupt("user code raised KeyboardInterrupt")
    return x


def test_base_exceptions_from_user_code_are_the_invocations_own_error(endpoint, tmp_path):
    endpoint("basex", local_config(workers=1, max_batch=8))
    log = str(tmp_path / "runs.log")
    inputs = ["a", "exit", "b", "interrupt", "c"]
    with Executor(endpoint="basex") as ex:
        futures = [ex.submit(behave, x, log) for x in inputs]
        assert futures[0].result(timeout=60) == "a"
        with pytest.raises(SystemExit, match="user code called sys.exit"):
            futures[1].result(timeout=60)
        with pytest.raises(KeyboardInterrupt, match="user code raised KeyboardInterrupt"):
            futures[3].result(timeout=60)
        assert [futures[i].result(timeout=60) for i in (2, 4)] == ["b", "c"]
        pids = {ex.submit(ctx_function(model=dict)(_pid)).result(timeout=60) for _ in range(3)}
    runs = open(log).read().split()
    assert sorted(runs) == sorted(inputs), "an invocation ran twice (treated as lost) or never"
    assert len(pids) == 1, "the worker process was replaced"


def _pid(ctx):
    return os.getpid()


def _returns_a_worker_only_class(ctx, folder):
    """A value whose class lives in a module only the worker can import (as a
    transformers object on a laptop without transformers)."""
    name = f"only_on_the_worker_{uuid.uuid4().hex}"
    with open(os.path.join(folder, f"{name}.py"), "w") as f:
        f.write("class Thing:\n    pass\n")
    sys.path.insert(0, folder)
    try:
        return __import__(name).Thing()
    finally:
        sys.path.remove(folder)


def test_a_result_the_client_cannot_unpickle_fails_only_its_own_future(endpoint, tmp_path):
    endpoint("unload", local_config(workers=1, max_batch=8))
    folder = tmp_path / "worker-only"
    folder.mkdir()
    odd = ctx_function(model=dict)(_returns_a_worker_only_class)
    with Executor(endpoint="unload") as ex:
        futures = [ex.submit(odd, str(folder)) if i == 2 else ex.submit(behave, str(i), str(tmp_path / "log"))
                   for i in range(5)]
        with pytest.raises(SerializationError, match="could not be unpickled here: ModuleNotFoundError"):
            futures[2].result(timeout=60)
        assert [futures[i].result(timeout=60) for i in (0, 1, 3, 4)] == ["0", "1", "3", "4"]
