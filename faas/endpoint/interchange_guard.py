"""Parsl's interchange, bound to the life of the endpoint daemon.

Parsl leaves its interchange running when the process that started it is
SIGKILLed, and the workers stay connected to that orphan (keeping their models
in memory) indefinitely. Linux's parent-death signal ends the interchange with
the daemon; the workers then exit once their heartbeats go unanswered.

    python -m faas.endpoint.interchange_guard DAEMON_PID   (config on stdin, as Parsl sends it)
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    daemon_pid = int(sys.argv[1])
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon_pid:  # the daemon died before the signal was armed
        sys.exit(1)
    runpy.run_module("parsl.executors.high_throughput.interchange", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
