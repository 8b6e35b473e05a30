"""A throw-away PostgreSQL server on a free loopback port.

    with postgres_server(tmp_path) as url:   # postgresql+psycopg://faas@127.0.0.1:PORT/faas
        engine = sqlalchemy.create_engine(url)

    with postgres_instance(tmp_path) as server:  # server.url; server.stop() and server.start() mid-test
        ...

PostgreSQL refuses to run as root, so the server runs as Debian's ``postgres``
system user. That user cannot enter pytest's tmp dirs (``/tmp/pytest-of-root``
is 0700), so the data directory and socket live in a private directory created
under /tmp and deleted on exit; the server log is ``tmpdir/postgres.log``.
Authentication is ``trust``: anybody on this machine can connect as superuser.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from ._util import ServiceNotInstalled, free_port, require, stop, wait_until

USER = "faas"  # superuser created by initdb
DBNAME = "faas"
OS_USER = "postgres"  # created by Debian's postgresql-common


def _bin_dir() -> Path:
    """The newest installed server version (Debian installs them side by side)."""
    dirs = Path("/usr/lib/postgresql").glob("*/bin")
    found = sorted(
        (d for d in dirs if (d / "postgres").exists()),
        key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)],
    )
    if not found:
        raise ServiceNotInstalled("PostgreSQL server (/usr/lib/postgresql/*/bin/postgres)")
    return found[-1]


def _accepts(conninfo: str) -> bool:
    psycopg.connect(conninfo, connect_timeout=2).close()
    return True


class PostgresServer:
    """A running server whose data directory outlives :meth:`stop`, so that
    :meth:`start` brings the same databases back on the same port (for tests
    that take the server away mid-run)."""

    def __init__(self, bin_dir: Path, data: Path, home: Path, port: int, log: Path):
        self.bin_dir, self.data, self.home, self.port, self.log = bin_dir, data, home, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DBNAME}"

    def start(self) -> None:
        as_postgres = dict(user=OS_USER, group=OS_USER, extra_groups=[], cwd=self.home, env={"LANG": "C.UTF-8"})
        with self.log.open("ab") as out:
            # Durability is pointless for a throw-away database; skipping it is much faster.
            self.proc = subprocess.Popen(
                [self.bin_dir / "postgres", "-D", self.data, "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", self.home, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=out, stderr=subprocess.STDOUT, **as_postgres,
            )
        admin = f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"
        wait_until(lambda: _accepts(admin), "postgres to accept connections", procs=((self.proc, self.log),))

    def stop(self) -> None:
        """SIGINT is "fast" shutdown: it disconnects clients (e.g. an undisposed
        SQLAlchemy pool), where SIGTERM would wait for them to leave."""
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)
            self.proc = None


@contextlib.contextmanager
def postgres_instance(tmpdir: str | Path) -> Iterator[PostgresServer]:
    """Start postgres with database ``faas``; yield it (stoppable and restartable); stop it on exit."""
    bin_dir = _bin_dir()
    require(bin_dir / "initdb", bin_dir / "postgres")
    log = Path(tmpdir) / "postgres.log"
    home = Path(tempfile.mkdtemp(prefix="faas-pg-", dir="/tmp"))
    try:
        shutil.chown(home, OS_USER, OS_USER)
        data = home / "data"
        with log.open("ab") as out:
            initdb = [bin_dir / "initdb", "-D", data, "-U", USER, "--auth=trust", "--no-sync",
                      "--encoding=UTF8", "--locale=C.UTF-8"]
            subprocess.run(initdb, stdout=out, stderr=subprocess.STDOUT, check=True, user=OS_USER,
                           group=OS_USER, extra_groups=[], cwd=home, env={"LANG": "C.UTF-8"})
        server = PostgresServer(bin_dir, data, home, free_port(), log)
        server.start()
        try:
            with psycopg.connect(f"host=127.0.0.1 port={server.port} user={USER} dbname=postgres",
                                 autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DBNAME}")
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(tmpdir: str | Path) -> Iterator[str]:
    """Start postgres, create database ``faas``, yield its SQLAlchemy URL; stop it on exit."""
    with postgres_instance(tmpdir) as server:
        yield server.url
