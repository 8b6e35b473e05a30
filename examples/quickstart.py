"""The smallest faas program: declare a context once, call the function many
times; each worker builds the context once and keeps it warm.

    python examples/quickstart.py
"""

import os
import time

from faas import Executor, ctx_function


def load_vocabulary(size):
    time.sleep(1.0)  # stands in for loading model weights
    return {"pid": os.getpid(), "words": [f"w{i}" for i in range(size)]}


@ctx_function(model=load_vocabulary, size=1000)
def lookup(ctx, i):
    return ctx["pid"], ctx["words"][i % len(ctx["words"])]


if __name__ == "__main__":
    t0 = time.perf_counter()
    with Executor() as ex:  # no endpoint given: an embedded local one, for this script only
        results = list(ex.map(lookup, range(500)))
    pids = {pid for pid, _ in results}
    print(f"{len(results)} invocations on {len(pids)} warm workers in {time.perf_counter() - t0:.1f} s")
    print("first results:", [w for _, w in results[:5]])
