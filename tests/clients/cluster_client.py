"""A client for the cluster tests: N invocations of slow_square(x). Its loader
appends its pid to INITS once per context init; each call sleeps DELAY seconds,
then appends x to CALLS. Prints one JSON object: per invocation x, the
worker's pid, its SLURM_JOB_ID, the result (or the error) and the wall-clock
time the result arrived. Usage: cluster_client.py ENDPOINT INITS CALLS N DELAY"""

import json
import os
import sys
import time
from concurrent.futures import as_completed

from faas import Executor, ctx_function


def record_pid(logfile):
    with open(logfile, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid()}


endpoint, inits, calls, n, delay = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])


@ctx_function(model=record_pid, logfile=inits)
def slow_square(ctx, x, calls, delay):
    time.sleep(delay)
    with open(calls, "a") as f:
        f.write(f"{x}\n")
    return ctx["pid"], os.environ.get("SLURM_JOB_ID"), x * x


rows = []
with Executor(endpoint=endpoint) as ex:
    futures = {ex.submit(slow_square, x, calls, delay): x for x in range(n)}
    for fut in as_completed(futures):
        row = {"x": futures[fut], "arrived": time.time()}
        try:
            row["pid"], row["job"], row["square"] = fut.result()
        except Exception as e:
            row["error"] = str(e)
        rows.append(row)
print(json.dumps(rows))
