"""Submits work, then leaves: with shutdown(wait=False), or with no shutdown at
all. The pending work must still finish (each result is appended to OUT by a
done-callback) before the interpreter exits.
Usage: exit_early.py ENDPOINT OUT N nowait|noshutdown"""

import sys
import time

from faas import Executor, ctx_function

endpoint, out, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


@ctx_function(model=dict)
def slow_square(ctx, x):
    time.sleep(0.2)
    return x * x


def record(fut):
    with open(out, "a") as f:
        f.write(f"{fut.result()}\n")


ex = Executor(endpoint=endpoint)
for x in range(n):
    ex.submit(slow_square, x).add_done_callback(record)
t0 = time.monotonic()
if how == "nowait":
    ex.shutdown(wait=False)
    print(f"returned after {time.monotonic() - t0:.2f}s")
    try:
        ex.submit(slow_square, 1)
    except RuntimeError as e:
        print(f"RuntimeError: {e}")
