"""Lifecycle of the endpoint daemon: run in the foreground, start in the
background (returning once it accepts work), stop by its recorded pid.

One daemon per endpoint: the daemon holds an exclusive lock on its pid file
(``flock``) from before it starts anything until it exits, and writes its pid
under it, so two daemons started at the same instant cannot both run; the
kernel releases the lock when the process dies, however it dies."""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import zmq
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from faas import protocol
from faas.endpoint.config import ConfigError, EndpointConfig, load_config
from faas.endpoint.storeguard import LOCK_WAIT, describe
from faas.errors import EndpointError, StoreUnavailable
from faas.home import EXIT_WITH_ENV, EndpointDir, read_pid
from faas.store import Store, sqlite_url

if TYPE_CHECKING:
    from faas.endpoint.engine import Engine

log = logging.getLogger(__name__)
PREFIX = "faas-endpoint: "  # of the one line a daemon that refuses to start prints (exit status 2)


def _hold_pidfile(epdir: EndpointDir) -> tuple[int, str]:
    """Lock the pid file for this process's life and write its pid there; returns
    the open file (closing it releases the lock) and what the file said before
    (a crashed daemon's pid). Raises EndpointError when another daemon holds it."""
    while True:
        fd = os.open(epdir.pidfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.fstat(fd).st_ino == os.stat(epdir.pidfile).st_ino
        except (BlockingIOError, FileNotFoundError) as e:
            os.close(fd)
            if isinstance(e, FileNotFoundError):
                continue  # its daemon removed it as it stopped: take a new one
            raise EndpointError(f"endpoint {epdir.name} is already running (pid {read_pid(epdir) or '?'}): "
                                f"stop it first (faas-endpoint stop {epdir.name})") from None
        if same:
            break
        os.close(fd)  # locked as its daemon removed it: a new one is at the path
    previous = os.pread(fd, 64, 0).decode(errors="replace")
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, previous


def _end_leftovers(epdir: EndpointDir, previous: str) -> None:
    """After a crash: end the worker pools the dead daemon (pid file content
    ``previous``) started on this node.

    Its interchange dies with it, but a Parsl worker pool that never reached the
    interchange (started just before the crash) waits for it indefinitely. They
    share the dead daemon's session (it started them) and name this endpoint's
    run folder on their command line."""
    try:
        old = int(previous.split()[0])
    except (ValueError, IndexError):
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
    try:
        return Store(config.store.url or sqlite_url(epdir.path), lock_wait=lock_wait)
    except SQLAlchemyError as e:
        raise store_error(epdir, config, e) from None


def store_error(epdir: EndpointDir, config: EndpointConfig, e: SQLAlchemyError) -> StoreUnavailable:
    """What is wrong with the endpoint's store, and what to do, in one line."""
    where = (make_url(config.store.url).render_as_string(hide_password=True) if config.store.url
             else str(epdir.path / "store.db"))
    cause, text = describe(e), str(getattr(e, "orig", e)).lower()
    if "locked" in text or "lock timeout" in text or "could not obtain lock" in text:
        todo = "another process holds it (a purge or an upgrade?): try again once it is done"
    elif "full" in text:
        todo = "the disk under it is full: free space and try again"
    elif config.store.url is None and isinstance(getattr(e, "orig", None), sqlite3.DatabaseError) and not \
            isinstance(e.orig, sqlite3.OperationalError):  # "file is not a database", "disk image is malformed"
        todo = ("the file is damaged: restore it from a backup, or move it away and the endpoint starts with an "
                "empty store (its records lost)")
    elif config.store.url is not None and any(w in text for w in ("connect", "refused", "timeout")):
        todo = "its database server does not answer: check that it runs and the config's store.url"
    else:
        todo = "check the store, then try again"
    return StoreUnavailable(f"the store of endpoint {epdir.name} ({where}) failed: {cause}; {todo}")


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
    config = load_config(epdir.config)
    os.umask(0o077)  # what the daemon and Parsl write (runinfo logs, CurveZMQ certificates) is owner-only
    epdir.make_private()  # it holds the socket, the store and the secret key
    held, previous = _hold_pidfile(epdir)
    try:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("parsl").propagate = False  # Parsl logs in detail to runinfo/
        epdir.config.chmod(0o600)  # written by hand, or by an older faas
        epdir.runinfo.mkdir(mode=0o700, exist_ok=True)
        epdir.runinfo.chmod(0o700)  # made by an older faas with the umask's mode
        _end_leftovers(epdir, previous)
        store = open_store(epdir, config, create=True, lock_wait=LOCK_WAIT)
        try:
            _serve(epdir, config, store, (engine_factory or _parsl_engine)(config, epdir.runinfo))
        finally:
            store.close()
    finally:
        epdir.pidfile.unlink(missing_ok=True)  # while locked: a daemon starting now takes a new file
        os.close(held)


def _serve(epdir: EndpointDir, config: EndpointConfig, store: Store, engine: Engine) -> None:
    from faas.endpoint.server import Server

    exit_with = os.environ.pop(EXIT_WITH_ENV, None)
    server = None
    try:
        server = Server(epdir, config, store, engine, exit_with=int(exit_with) if exit_with else None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: server.stop())
        # what start-up made (modules, the config, Parsl's executor) lives as long as the daemon: out of the
        # collector's full passes, which otherwise walk it again and again under load
        gc.freeze()
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
        since = logf.tell()  # its own lines: another daemon (refused, or refusing it) may write here too
        proc = subprocess.Popen([sys.executable, "-m", "faas.endpoint.daemon", epdir.name],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=epdir.path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == 2:  # it said why (see __main__)
                raise EndpointError(_last_line(epdir.log, since, PREFIX).removeprefix(PREFIX))
            raise EndpointError(f"endpoint {epdir.name} exited during start-up (code {proc.returncode}): "
                                f"{_last_line(epdir.log, since)} (its log: {epdir.log})")
        if epdir.socket.exists() and ping(epdir.address, timeout=1.0):
            return proc.pid
        time.sleep(0.1)
    proc.terminate()
    raise EndpointError(f"endpoint {epdir.name} did not answer within {timeout:.0f}s: "
                        f"{_last_line(epdir.log, since)} (its log: {epdir.log})")


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


def _last_line(path: Path, since: int, prefix: str = "") -> str:
    """The last line written to ``path`` after offset ``since`` that starts with ``prefix``."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.startswith(prefix)]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(nothing in its log)"


if __name__ == "__main__":
    try:
        run(EndpointDir.of(sys.argv[1]))
    except (ConfigError, EndpointError, StoreUnavailable) as e:
        print(f"{PREFIX}{e}", file=sys.stderr)
        sys.exit(2)
