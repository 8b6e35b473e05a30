"""The throw-away services in tests/services start, work for real, and stop.

Without the binaries these tests skip, unless CI is set: in CI a missing
service is a broken machine image, so they fail.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from services._util import wait_until
from services.postgres import postgres_server
from services.slurm import slurm_cluster
from services.sshd import sshd_server


def test_postgres_round_trip(start_service):
    engine = sa.create_engine(start_service(postgres_server))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE fn (id serial PRIMARY KEY, name text NOT NULL)"))
            conn.execute(sa.text("INSERT INTO fn (name) VALUES ('a'), ('b')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM fn ORDER BY id")).scalars().all() == ["a", "b"]
    finally:
        engine.dispose()


def test_sshd_runs_remote_commands(start_service):
    server = start_service(sshd_server)
    ssh = ["ssh", *server.ssh_args(), server.destination]
    assert subprocess.run([*ssh, "echo hi"], capture_output=True, text=True, check=True).stdout == "hi\n"
    # The remote side has no virtualenv active, but can run one by its full path.
    python = shlex.join([sys.executable, "-c", "import sqlalchemy; print(42)"])
    out = subprocess.run([*ssh, python], capture_output=True, text=True, check=True).stdout
    assert out == "42\n"


def _echo_server(path: Path) -> socket.socket:
    """A Unix socket that echoes one connection's bytes back, from a thread."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve():
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_sshd_forwards_unix_sockets(start_service, tmp_path):
    server = start_service(sshd_server)
    remote, local = tmp_path / "remote.sock", tmp_path / "local.sock"
    with _echo_server(remote):
        tunnel = subprocess.Popen(["ssh", *server.ssh_args(), "-o", "ExitOnForwardFailure=yes", "-N",
                                   "-L", f"{local}:{remote}", server.destination])
        try:
            wait_until(local.exists, "the forwarded socket", timeout=10)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(local))
                client.sendall(b"ping")
                assert client.recv(4) == b"ping"
        finally:
            tunnel.terminate()
            tunnel.wait()


def _slurm(cluster, *args: str) -> str:
    return subprocess.run(args, env={**os.environ, **cluster.env}, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def _queue(cluster) -> list[str]:
    return _slurm(cluster, "squeue", "--noheader", "--format=%i %T").split()


def test_slurm_runs_batch_jobs_and_steps(start_service, tmp_path):
    cluster = start_service(slurm_cluster)
    assert _slurm(cluster, "srun", "hostname").strip() == cluster.node
    done = tmp_path / "done"
    _slurm(cluster, "sbatch", f"--chdir={tmp_path}", f"--wrap=hostname > {done}.tmp && mv {done}.tmp {done}")
    wait_until(done.exists, "the batch job to write its file")
    assert done.read_text().strip() == cluster.node


def test_slurm_cancels_jobs(start_service, tmp_path):
    cluster = start_service(slurm_cluster)
    job = _slurm(cluster, "sbatch", "--parsable", f"--chdir={tmp_path}", "--wrap=sleep 100").strip()
    wait_until(lambda: _queue(cluster) == [job, "RUNNING"], "the job to run")
    _slurm(cluster, "scancel", job)
    wait_until(lambda: job not in _queue(cluster), "the cancelled job to leave the queue", timeout=15)
