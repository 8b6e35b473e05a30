"""Lifecycle of the endpoint daemon: run in the foreground, start in the
background (returning once it accepts work), stop by its recorded pid."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import zmq

from faas import protocol
from faas.endpoint.config import ConfigError, EndpointConfig, load_config
from faas.endpoint.storeguard import LOCK_WAIT
from faas.errors import EndpointError, StoreUnavailable
from faas.home import EXIT_WITH_ENV, EndpointDir, read_pid, write_private
from faas.store import Store, sqlite_url

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine

log = logging.getLogger(__name__)


def _end_leftovers(epdir: EndpointDir) -> None:
    """After a crash: end the worker pools the dead daemon started on this node.

    Its interchange dies with it, but a Parsl worker pool that never reached the
    interchange (started just before the crash) waits for it indefinitely. They
    share the dead daemon's session (it started them) and name this endpoint's
    run folder on their command line."""
    try:
        old = int(epdir.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if read_pid(epdir) is not None:
        return
    marker = str(epdir.runinfo)
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == old and any(marker in arg for arg in proc.cmdline()):
                for p in [*proc.children(recursive=True), proc]:
                    log.warning("ending pid %d, left by the previous daemon (pid %d)", p.pid, old)
                    p.kill()
        except (OSError, psutil.Error):
            pass


def open_store(epdir: EndpointDir, config: EndpointConfig, create: bool = False, lock_wait: float = 30.0) -> Store:
    """The endpoint's store, upgraded to this faas' schema. Only the daemon creates
    the default SQLite store: a missing store.db is reported to readers, not replaced
    by an empty one. ``lock_wait``: see :class:`Store`."""
    if config.store.url is None:
        db = epdir.path / "store.db"
        if not create and not db.exists():
            raise StoreUnavailable(f"endpoint {epdir.name} has no store at {db}: it has never started, "
                                   f"or its store.db was deleted or moved")
        _owner_only_sqlite(db)
    return Store(config.store.url or sqlite_url(epdir.path), lock_wait=lock_wait)


def _parsl_engine(config: EndpointConfig, run_dir: Path) -> Engine:
    from faas.endpoint.engine import ParslEngine  # imports Parsl: only in the daemon

    return ParslEngine(config.engine, run_dir, prewarm=config.warm_pool.prewarm)


def _owner_only_sqlite(db: Path) -> None:
    """SQLite gives its -wal and -shm files the mode of the database file, so
    the database is created 0600 before SQLite first opens it."""
    os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (db, db.with_name(f"{db.name}-wal"), db.with_name(f"{db.name}-shm")):
        if path.exists():
            path.chmod(0o600)


def run(epdir: EndpointDir, engine_factory: Callable[[EndpointConfig, Path], Engine] | None = None) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT. ``engine_factory``
    (config, run folder) -> the engine: Parsl unless a benchmark's simulated
    fleet stands in for it (not configurable)."""
    from faas.endpoint.server import Server

    config = load_config(epdir.config)
    if read_pid(epdir) not in (None, os.getpid()):
        raise EndpointError(f"endpoint {epdir.name} is already running (pid {read_pid(epdir)})")
    os.umask(0o077)  # what the daemon and Parsl write (runinfo logs, CurveZMQ certificates) is owner-only
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("parsl").propagate = False  # Parsl logs in detail to runinfo/
    epdir.make_private()  # it holds the socket, the store and the secret key
    epdir.config.chmod(0o600)  # written by hand, or by an older faas
    epdir.runinfo.mkdir(mode=0o700, exist_ok=True)
    epdir.runinfo.chmod(0o700)  # made by an older faas with the umask's mode
    _end_leftovers(epdir)
    write_private(epdir.pidfile, f"{os.getpid()}\n")
    store = open_store(epdir, config, create=True, lock_wait=LOCK_WAIT)
    engine = (engine_factory or _parsl_engine)(config, epdir.runinfo)
    exit_with = os.environ.pop(EXIT_WITH_ENV, None)
    server = None
    try:
        server = Server(epdir, config, store, engine, exit_with=int(exit_with) if exit_with else None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: server.stop())
        server.serve_forever()
    except Exception as e:
        if server is not None and server.fatal is None:  # its clients are told as it closes
            server.fatal = f"{type(e).__name__}: {e}"
        raise
    finally:
        log.info("endpoint %s stopping", epdir.name)
        if server is not None:
            server.close()
        engine.shutdown()  # its callbacks may still wake the server: the pipe closes after it
        if server is not None:
            server.close_wake()
        store.close()
        epdir.pidfile.unlink(missing_ok=True)
        log.info("endpoint %s stopped", epdir.name)


def start_background(epdir: EndpointDir, timeout: float = 120.0) -> int:
    """Start the daemon detached; return its pid once it answers on its socket.

    The daemon inherits this environment: with ``EXIT_WITH_ENV`` set, it stops
    by itself when that process is gone (an embedded endpoint's client)."""
    load_config(epdir.config)  # report config mistakes here, not in a log file
    pid = read_pid(epdir)
    if pid is not None:
        raise EndpointError(f"endpoint {epdir.name} is already running (pid {pid})")
    env = dict(os.environ, FAAS_HOME=str(epdir.path.parent.parent))
    with open(os.open(epdir.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "faas.endpoint.daemon", epdir.name],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=epdir.path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EndpointError(f"endpoint {epdir.name} exited during start-up "
                                f"(code {proc.returncode}):\n{_tail(epdir.log)}")
        if epdir.socket.exists() and ping(epdir.address, timeout=1.0):
            return proc.pid
        time.sleep(0.1)
    proc.terminate()
    raise EndpointError(f"endpoint {epdir.name} did not answer within {timeout:.0f}s:\n{_tail(epdir.log)}")


def stop(epdir: EndpointDir, timeout: float = 60.0) -> bool:
    """Stop the daemon by its pid and wait until the process is gone; returns
    False when it was not running."""
    pid = read_pid(epdir)
    if pid is None:
        epdir.pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        log.warning("endpoint %s (pid %d) ignored SIGTERM for %.0fs; killing it", epdir.name, pid, timeout)
        os.kill(pid, signal.SIGKILL)
        epdir.pidfile.unlink(missing_ok=True)
    return True


def request(address: str, kind: str, timeout: float = 5.0) -> dict:
    """One request/reply exchange with an endpoint (``ping`` or ``status``, for the CLI)."""
    zctx = zmq.Context.instance()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send_multipart(protocol.encode(protocol.Ping() if kind == "ping" else protocol.StatusRequest()))
        if not sock.poll(int(timeout * 1000)):
            raise EndpointError(f"no answer from {address} within {timeout:.0f}s")
        reply, _ = protocol.decode(sock.recv_multipart(), protocol.CLIENT_REPLIES)
        return reply.model_dump()
    finally:
        sock.close(0)


def ping(address: str, timeout: float = 1.0) -> bool:
    try:
        return request(address, "ping", timeout)["type"] == "pong"
    except EndpointError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


if __name__ == "__main__":
    try:
        run(EndpointDir.of(sys.argv[1]))
    except (ConfigError, EndpointError, StoreUnavailable) as e:
        print(f"faas-endpoint: {e}", file=sys.stderr)
        sys.exit(2)
