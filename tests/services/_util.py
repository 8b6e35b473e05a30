"""Helpers shared by the service fixtures: ports, polling, process shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")


class ServiceNotInstalled(RuntimeError):
    """A service's binaries are missing (tests outside CI skip on this)."""

    def __init__(self, what: str):
        super().__init__(f"{what} not installed; run `bash .ci/services.sh install` (as root)")


def require(*paths: str | Path) -> None:
    """Fail early, with the fix, when a service binary is not installed."""
    missing = [str(p) for p in paths if not os.access(p, os.X_OK)]
    if missing:
        raise ServiceNotInstalled(", ".join(missing))


def free_port() -> int:
    """A loopback TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    check: Callable[[], T],
    what: str,
    timeout: float = 30.0,
    procs: tuple[tuple[subprocess.Popen, Path], ...] = (),
    interval: float = 0.1,
) -> T:
    """Poll ``check`` until it returns something truthy; exceptions mean "not yet".

    ``procs`` are (daemon, log file) pairs: if one of them dies while we wait,
    fail at once and show its log instead of waiting for the timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for proc, log in procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args[0]} exited with {proc.returncode} while waiting "
                    f"for {what}; log {log}:\n{log_tail(log)}"
                )
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the service is not up yet
            last_error = exc
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {log}:\n{log_tail(log)}" for _, log in procs)
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {last_error!r}\n{logs}")
        time.sleep(interval)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE  # zombies wait for init to reap them
    except psutil.NoSuchProcess:
        return False


def _end(procs: list[psutil.Process], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` (psutil refuses to signal a reused pid)."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    deadline = time.monotonic() + timeout
    while (procs := [p for p in procs if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a daemon we started, and whatever it forked that outlives it.

    ``sig`` goes to the daemon, SIGKILL after ``timeout``. Daemons do not always
    take their children along (sshd leaves per-connection processes behind), so
    those get SIGTERM, then SIGKILL.
    """
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _end(family, timeout)


def kill_strays(env_var: str, value: str) -> None:
    """End processes outside our own process tree whose environment has ``env_var=value``.

    For daemons whose workers are not their descendants (slurmd's slurmstepd and
    job processes are re-parented to init), a variable that only they inherit is
    what identifies them as ours.
    """
    me = psutil.Process()
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
    strays = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid not in ours and p.environ().get(env_var) == value:
                strays.append(p)
    _end(strays, timeout=5)
