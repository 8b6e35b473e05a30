"""CPython's test_interpreter_shutdown against faas: submit a function that
sleeps 1 s and prints, then end without shutdown(). The line must appear on
this script's own stdout (prefixed with its worker) and the script exit cleanly.
Usage: print_at_exit.py ENDPOINT"""

import sys
import time

from faas import Executor


def sleep_and_print(t, msg):
    time.sleep(t)
    print(msg)
    sys.stdout.flush()


t = Executor(endpoint=sys.argv[1])
t.submit(sleep_and_print, 1.0, "apple")
