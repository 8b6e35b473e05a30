"""A client process: N invocations of a function whose loader records each call
(its pid, one line) in a file. Usage: pid_loader.py ENDPOINT LOGFILE N"""

import os
import sys

from faas import Executor, ctx_function


def record_pid(logfile):
    with open(logfile, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid()}


endpoint, logfile, n = sys.argv[1], sys.argv[2], int(sys.argv[3])


@ctx_function(model=record_pid, logfile=logfile)
def square(ctx, x):
    return ctx["pid"], x * x


with Executor(endpoint=endpoint) as ex:
    results = list(ex.map(square, range(n)))
assert [r[1] for r in results] == [x * x for x in range(n)], results
print(len({pid for pid, _ in results}))
