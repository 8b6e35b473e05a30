"""The first client of the reattach test: submits N slow invocations in task
group G, waits for a few results, then vanishes without shutting down (a laptop
closed mid-run). Usage: reattach_first.py ENDPOINT GROUP N"""

import os
import sys
import time

from faas import Executor, ctx_function


@ctx_function(model=lambda: {"factor": 3})
def slow_triple(ctx, x):
    time.sleep(0.05)
    return ctx["factor"] * x


endpoint, group, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ex = Executor(endpoint=endpoint, task_group_id=group)
futures = [ex.submit(slow_triple, x) for x in range(n)]
futures[0].result(timeout=120)
print(sum(f.done() for f in futures), flush=True)
os._exit(0)
