"""Submits N invocations with large results, stops itself (SIGSTOP) once the
first result is in, and, continued, waits for every result.
Usage: slow_reader.py ENDPOINT RUNS_LOG N RESULT_BYTES
Prints "ok N SUM" and the seconds it waited after it was continued."""

import os
import signal
import sys
import time

from faas import Executor, ctx_function

endpoint, runs, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


@ctx_function(model=lambda path: {"log": path}, path=runs)
def padded(ctx, x, size):
    with open(ctx["log"], "a") as f:
        f.write(f"{x}\n")
    return x, b"." * size


with Executor(endpoint=endpoint) as ex:
    futures = [ex.submit(padded, x, size) for x in range(n)]
    futures[0].result(timeout=120)
    os.kill(os.getpid(), signal.SIGSTOP)
    resumed = time.monotonic()
    values = [f.result(timeout=120) for f in futures]
    waited = time.monotonic() - resumed
    assert [x for x, _ in values] == list(range(n)), "results out of order or wrong"
    assert all(len(blob) == size for _, blob in values)
    print(f"ok {n} {sum(x for x, _ in values)} {waited:.1f}")
