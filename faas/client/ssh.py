"""``ssh://[user@]host[:port]/NAME``: an endpoint's Unix socket on another
machine, forwarded to a local one by the user's own OpenSSH client (their
config, agent and keys), so the cluster needs nothing but sshd:

    ssh -tt -L /tmp/faas-ssh-XXXX/endpoint.sock:REMOTE_FAAS_HOME/endpoints/NAME/endpoint.sock host cat

The session runs ``cat`` on a pseudo-terminal rather than no session at all
(``-N``) because only interactive sessions make OpenSSH set TCP_NODELAY on
both ends: with ``-N``, Nagle's algorithm holds a result that follows its
submission's acknowledgement until a delayed ACK, adding ~40 ms to every round
trip (measured on loopback: p50 48 ms with ``-N``, 9 ms with a pty).

The local socket lives in a private (0700) temporary folder. The ssh process
is watched: when it dies (network gone, laptop asleep, sshd restarted) it is
started again with back-off, and ZeroMQ reconnects through the new tunnel.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from faas.client.threads import guarded
from faas.client.transport_base import Transport
from faas.errors import ClientError, EndpointError
from faas.home import EndpointDir

log = logging.getLogger(__name__)

# Given after the user's ssh_options: for ssh the first value of an option wins.
TUNNEL_OPTIONS = (
    "-o", "ExitOnForwardFailure=yes",   # a forward that cannot be set up is an exit, not a warning
    "-o", "ServerAliveInterval=15",     # notice a dead link within a minute
    "-o", "ServerAliveCountMax=3",
    "-o", "StreamLocalBindUnlink=yes",  # a restart reuses the local socket path
    "-o", "ControlMaster=no",           # never become a master that other ssh sessions depend on
)


class SSHTransport(Transport):
    """Options: ``ssh_options`` (extra ``ssh`` arguments, e.g. ``["-i", key,
    "-o", "ProxyJump=gateway"]``); where the remote endpoint keeps its state:
    ``remote_faas_home`` (the remote FAAS_HOME, by default the remote login's
    own); and how to ask the remote faas for the socket path: ``remote_python``
    (a python with faas installed) or ``remote_command`` (a shell command that
    runs ``faas-endpoint``; default ``faas-endpoint``). With an absolute
    ``remote_faas_home`` and neither of the others, no remote command runs.
    ``ssh`` is the ssh program; ``start_timeout`` bounds the lookup and the
    tunnel's start.
    """

    def __init__(self, endpoint: str, *, ssh_options: Sequence[str] = (), remote_faas_home: str | None = None,
                 remote_python: str | None = None, remote_command: str | None = None, ssh: str = "ssh",
                 start_timeout: float = 30.0):
        destination, port, name = parse(endpoint)
        if remote_python is not None and remote_command is not None:
            raise TypeError("give remote_python or remote_command, not both")
        if remote_python is not None:
            remote_command = f"{shlex.quote(remote_python)} -m faas.endpoint.cli"
        self.destination = destination
        self._ssh = [ssh, *(["-p", str(port)] if port else []), *ssh_options]
        remote = self._remote_socket(name, remote_faas_home, remote_command, start_timeout)
        self.folder = Path(tempfile.mkdtemp(prefix="faas-ssh-"))
        local = self.folder / "endpoint.sock"
        super().__init__(f"ipc://{local}")
        command = [*self._ssh, *TUNNEL_OPTIONS, "-tt", "-L", f"{local}:{remote}", destination, "cat"]
        try:
            self.tunnel = Tunnel(command, local, self.folder / "ssh.log", start_timeout,
                                 on_fatal=lambda error: self.on_fatal(error))
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _remote_socket(self, name: str, faas_home: str | None, command: str | None, timeout: float) -> str:
        if command is None and faas_home is not None:
            if not posixpath.isabs(faas_home):
                raise EndpointError(f"remote_faas_home={faas_home!r} must be an absolute path "
                                    "(or give remote_python/remote_command to ask the remote faas)")
            return posixpath.join(faas_home, "endpoints", name, "endpoint.sock")
        env = f"env FAAS_HOME={shlex.quote(faas_home)} " if faas_home else ""
        remote = f"{env}{command or 'faas-endpoint'} address {shlex.quote(name)}"
        try:
            # ControlMaster=no: a master left running (ControlPersist) would hold our pipes open
            proc = subprocess.run([*self._ssh, "-T", "-o", "ControlMaster=no", self.destination, remote],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EndpointError(f"ssh {self.destination} {remote!r} did not finish within {timeout:g}s") from None
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("ipc://"):
            raise EndpointError(
                f"cannot find endpoint {name!r} on {self.destination}: `{remote}` exited with "
                f"{proc.returncode}: {proc.stderr.strip()[-2000:] or proc.stdout.strip()[-2000:]}\n"
                "(pass remote_python= or remote_command= to say how faas runs there, "
                "or remote_faas_home= to give its state folder)")
        return lines[-1].removeprefix("ipc://")

    def unreachable(self, timeout: float, detail: str) -> EndpointError:
        return EndpointError(f"no answer from the endpoint through the ssh tunnel to {self.destination} "
                             f"within {timeout:g}s{detail}; ssh's log:\n{self.tunnel.log_tail()}")

    def close(self) -> None:
        self.tunnel.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def parse(endpoint: str) -> tuple[str, int | None, str]:
    """``ssh://[user@]host[:port]/NAME`` -> (ssh destination, port, NAME)."""
    parts = urlsplit(endpoint)
    name = parts.path.removeprefix("/")
    try:
        port, host = parts.port, parts.hostname
        EndpointDir.of(name)  # checks the name
    except ValueError as e:
        raise EndpointError(f"{endpoint!r}: {e}; use ssh://[USER@]HOST[:PORT]/NAME") from None
    if parts.scheme != "ssh" or not host or parts.query or parts.fragment or parts.password:
        raise EndpointError(f"{endpoint!r} is not ssh://[USER@]HOST[:PORT]/NAME")
    return (f"{parts.username}@{host}" if parts.username else host), port, name


class Tunnel:
    """One ``ssh -L`` process at a time, started again with back-off when it
    exits until ``close()``."""

    FIRST_DELAY, MAX_DELAY = 0.5, 30.0
    HEALTHY_AFTER = 60.0  # a tunnel that lived this long restarts without delay growth

    def __init__(self, command: list[str], local: Path, log_file: Path, start_timeout: float,
                 on_fatal: Callable[[ClientError], None] = lambda error: None):
        self.command, self.local, self.log_file = command, local, log_file
        self.restarts = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._proc = self._start()
        self._wait_up(start_timeout)
        self._watcher = threading.Thread(target=guarded("the ssh tunnel's watcher", self._watch, on_fatal),
                                         name="faas-ssh-tunnel", daemon=True)
        self._watcher.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _start(self) -> subprocess.Popen:
        self.local.unlink(missing_ok=True)
        with open(self.log_file, "ab") as out:
            return subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def _wait_up(self, timeout: float) -> None:
        """Until ssh has logged in and made the local socket."""
        deadline = time.monotonic() + timeout
        while not self.local.exists():
            if self._proc.poll() is not None:
                raise EndpointError(f"ssh exited with {self._proc.returncode} before the tunnel was up:\n"
                                    f"{self.log_tail()}")
            if time.monotonic() > deadline:
                _end(self._proc)
                raise EndpointError(f"the ssh tunnel was not up within {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _watch(self) -> None:
        delay = self.FIRST_DELAY
        while True:
            proc, started = self._proc, time.monotonic()
            proc.wait()
            if self._closed.is_set():
                return
            if time.monotonic() - started > self.HEALTHY_AFTER:
                delay = self.FIRST_DELAY
            log.warning("ssh tunnel (pid %d) exited with %s; restarting in %.1fs. ssh's log:\n%s",
                        proc.pid, proc.returncode, delay, self.log_tail(5))
            if self._closed.wait(delay):
                return
            with self._lock:
                if self._closed.is_set():
                    return
                self._proc = self._start()
                self.restarts += 1
            delay = min(2 * delay, self.MAX_DELAY)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            proc = self._proc
        _end(proc)
        self._watcher.join(timeout=10)


def _end(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop the ssh process we started (by its Popen, so never a reused pid)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
