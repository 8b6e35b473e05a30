"""Fixtures that start real endpoints (real Parsl workers, real SQLite) in a
throw-away FAAS_HOME, and make sure nothing they started outlives the test."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from services._util import ServiceNotInstalled

ROOT = Path(__file__).resolve().parent.parent
FAAS_ENDPOINT = [sys.executable, "-m", "faas.endpoint.cli"]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped where torch is missing or sees no GPU."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _cuda_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture
def faas_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "faas-home"
    monkeypatch.setenv("FAAS_HOME", str(home))
    return home


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FAAS_ENDPOINT, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"faas-endpoint {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def status(name: str) -> dict:
    return json.loads(cli("status", name, "--json").stdout)


def write_config(home: Path, name: str, text: str) -> None:
    path = home / "endpoints" / name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(text)


def local_config(workers: int = 2, max_batch: int = 64, heartbeat: tuple[int, int] = (30, 120),
                 extra: str = "", prewarm: str = "[]") -> str:
    """A one-block local endpoint. ``prewarm``: what its workers import as they
    start; none by default, since most tests never import torch."""
    line = f"  prewarm: {prewarm}\n"
    extra = extra if not extra or extra.endswith("\n") else extra + "\n"
    extra = extra.replace("warm_pool:\n", "warm_pool:\n" + line) if "warm_pool:\n" in extra \
        else extra + "warm_pool:\n" + line
    return f"""\
engine:
  max_workers_per_node: {workers}
  address: 127.0.0.1
  heartbeat_period: {heartbeat[0]}
  heartbeat_threshold: {heartbeat[1]}
  strategy_period: 0.5
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 1
    max_blocks: 1
dispatch:
  max_batch: {max_batch}
{extra}"""


class RunningEndpoint:
    """An endpoint started with the CLI; remembers every process it spawned."""

    def __init__(self, home: Path, name: str):
        self.home, self.name = home, name
        self.processes: dict[int, psutil.Process] = {}

    @property
    def path(self) -> Path:
        return self.home / "endpoints" / self.name

    @property
    def pid(self) -> int:
        return int((self.path / "daemon.pid").read_text())

    def running(self) -> bool:
        """The daemon itself is alive (a crashed one leaves its pid file behind)."""
        try:
            daemon = psutil.Process(self.pid)
            return _alive(daemon) and self.name in daemon.cmdline()
        except (OSError, ValueError, psutil.Error):
            return False

    def start(self) -> None:
        cli("start", self.name)
        self.track()

    def session(self) -> list[psutil.Process]:
        """The daemon and everything it started: they share its session (it is
        started with setsid), even the worker pools Parsl re-parents to init."""
        return session_processes(self.pid)

    def track(self) -> None:
        deadline = time.monotonic() + 30
        while not any("process_worker_pool" in _cmdline(p) for p in self.session()):
            assert time.monotonic() < deadline, "no worker pool started"
            time.sleep(0.2)
        self.processes.update({p.pid: p for p in self.session()})

    def workers(self) -> list[psutil.Process]:
        """Worker processes: the children of a worker pool (manager)."""
        return [p for p in self.session()
                if "process_worker_pool" in _cmdline(p.parent()) and "spawn_main" in _cmdline(p)]

    def stop(self) -> None:
        cli("stop", self.name, check=False)
        # what it started (tracked), and any process still naming its folder (a worker
        # pool started after the last track(), e.g. a replacement block)
        stray = [p for p in psutil.process_iter() if str(self.path) in _cmdline(p)]
        ending = [p for p in {*self.processes.values(), *stray} if _alive(p)]
        psutil.wait_procs(ending, timeout=15)  # blocks cancelled by Parsl take a moment
        leftovers = [p for p in ending if _alive(p)]
        for p in leftovers:  # only processes this endpoint started
            p.kill()
        assert not leftovers, f"processes left after stop: {[_cmdline(p) for p in leftovers]}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process | None) -> str:
    try:
        return " ".join(p.cmdline()) if p is not None else ""
    except psutil.Error:
        return ""


def session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except OSError:
            pass
    return out


def started_endpoints(faas_home: Path, cls: type[RunningEndpoint] = RunningEndpoint, default_config=None):
    """Generator behind the endpoint fixtures: yields make(name, config) -> a
    started endpoint of ``cls``; stops every one it made when resumed."""
    started: list[RunningEndpoint] = []

    def make(name: str = "test", config: str | None = None) -> RunningEndpoint:
        write_config(faas_home, name, config or default_config())
        ep = cls(faas_home, name)
        ep.start()
        started.append(ep)
        return ep

    yield make
    for ep in started:
        ep.stop()


@pytest.fixture
def endpoint(faas_home):
    """Factory: endpoint(name, config_text) -> a started RunningEndpoint, stopped after the test."""
    yield from started_endpoints(faas_home, default_config=local_config)


@contextlib.contextmanager
def sqlite_locked(db: Path):
    """Hold SQLite's write lock on ``db`` from outside the daemon, as a long ``purge`` would."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def run_client(script: str, *args: str, timeout: float = 180, env: dict | None = None) -> str:
    """Run a client script from tests/clients as its own process (its functions live in __main__)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "clients" / script), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise AssertionError(f"client {script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _start_or_skip(stack: contextlib.ExitStack, service, tmpdir: Path):
    """Without the service's binaries: skip, except in CI, where it is a broken image."""
    try:
        return stack.enter_context(service(tmpdir))
    except ServiceNotInstalled as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{exc} (with CI set this fails)")


@pytest.fixture
def start_service(tmp_path):
    """start_service(service) -> what the service's context manager yields; stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda service: _start_or_skip(stack, service, tmp_path)


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory):
    """One real PostgreSQL server for the session (tests get their own database)."""
    from services.postgres import postgres_server

    with contextlib.ExitStack() as stack:
        yield _start_or_skip(stack, postgres_server, tmp_path_factory.mktemp("postgres"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(request.getfixturevalue("postgres_server_url"))
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=server.host, port=server.port, user=server.username, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.set(database=name).render_as_string(hide_password=False)
