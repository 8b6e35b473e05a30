"""A fault in the client's I/O thread (Connection._receive raises) while
futures are open, in a script that never shuts its executor down: every future
fails with ClientError and the interpreter still exits. Prints each future's
exception type, then how long after the fault they had all ended.
Usage: io_fault.py ENDPOINT"""

import concurrent.futures as cf
import sys
import time

from faas import Executor
from faas.client.connection import Connection


def broken_receive(self, sock):
    raise OSError("injected: the socket read failed")


ex = Executor(endpoint=sys.argv[1])
assert ex.submit(abs, -1).result(timeout=60) == 1
futures = [ex.submit(time.sleep, 1.5) for _ in range(2)]
Connection._receive = broken_receive  # the next message from the endpoint (their ack) raises
t0 = time.monotonic()
futures.append(ex.submit(abs, -2))
cf.wait(futures, timeout=10)
print(f"ended {time.monotonic() - t0:.2f}")
for fut in futures:
    print(type(fut.exception(timeout=0)).__name__ if fut.done() else "pending")
try:
    ex.submit(abs, -3)
except Exception as e:
    print("submit:", type(e).__name__)
