"""Submits to an endpoint that makes no progress (its store is locked), then
dies of an unrelated exception: the wait at exit must end within EXIT_TIMEOUT
seconds (or at once on Ctrl-C) and say what is pending and how to reattach.
Writes MARKER just before it raises. Usage: exit_stalled.py ENDPOINT EXIT_TIMEOUT MARKER"""

import faulthandler
import pathlib
import signal
import sys

from faas import Executor

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks where it is if it does not end
endpoint, exit_timeout, marker = sys.argv[1], float(sys.argv[2]), pathlib.Path(sys.argv[3])
ex = Executor(endpoint=endpoint, exit_timeout=exit_timeout)
futures = [ex.submit(pow, 2, x) for x in range(3)]
print(ex.task_group_id, flush=True)
marker.write_text(ex.task_group_id)
raise RuntimeError("an unrelated bug in the script")
