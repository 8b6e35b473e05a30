"""ssh:// endpoints through a real sshd on loopback: the remote endpoint keeps
its state under a non-default FAAS_HOME, the remote login has no virtualenv and
no FAAS_HOME, and the tunnel is an ``ssh`` process that may die mid-run."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
import uuid

import psutil
import pytest
from conftest import ROOT, RunningEndpoint, _start_or_skip, local_config, status, write_config
from services.sshd import sshd_server

from faas import Executor, ctx_function
from faas.errors import EndpointError

# The remote side runs a plain login shell: say which python and faas to use.
REMOTE_FAAS = f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m faas.endpoint.cli"


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """(sshd server, endpoint name, remote FAAS_HOME) with the endpoint running."""
    tmp = tmp_path_factory.mktemp("ssh")
    home, name = tmp / "remote-faas-home", f"ssh-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        server = _start_or_skip(stack, sshd_server, tmp)
        mp.setenv("FAAS_HOME", str(home))  # for the CLI calls of this test module
        write_config(home, name, local_config(workers=2))
        ep = RunningEndpoint(home, name)
        ep.start()
        try:
            yield server, name, home
        finally:
            ep.stop()


def _url(server, name: str) -> str:
    return f"ssh://{server.user}@{server.host}:{server.port}/{name}"


def _ssh_options(server) -> list[str]:
    """The server's ssh arguments but its port, which the URL carries."""
    args = server.ssh_args()
    assert args[:2] == ["-p", str(server.port)]
    return args[2:]


@ctx_function(model=dict)
def increment(ctx, x):
    return x + 1


def logged_triple(ctx, x):
    with open(ctx["log"], "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.02)
    return 3 * x


def test_submit_map_reattach_and_shutdown(remote):
    server, name, home = remote
    group = uuid.uuid4().hex
    ex = Executor(endpoint=_url(server, name), task_group_id=group, ssh_options=_ssh_options(server),
                  remote_faas_home=str(home), remote_command=REMOTE_FAAS)
    tunnel, folder = ex._transport.tunnel, ex._transport.folder
    try:
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert ex.submit(increment, 41).result(timeout=60) == 42
        assert list(ex.map(increment, range(20))) == list(range(1, 21))
    finally:
        ex.shutdown(cancel_futures=True)  # a failed check must not wait for lost futures
    assert not psutil.pid_exists(tunnel.pid) or psutil.Process(tunnel.pid).status() == psutil.STATUS_ZOMBIE
    assert not folder.exists()

    # A second client reattaches to the group; with an absolute remote_faas_home
    # it needs no remote command at all.
    with Executor(endpoint=_url(server, name), task_group_id=group, ssh_options=_ssh_options(server),
                  remote_faas_home=str(home)) as again:
        futures = again.reload_tasks()
        assert sorted(f.result(timeout=60) for f in futures) == list(range(1, 21)) + [42]


def test_the_remote_faas_home_is_where_the_endpoint_is_looked_up(remote):
    server, name, home = remote
    with pytest.raises(EndpointError, match=f"no endpoint '{name}'"):  # the remote default ~/.faas
        Executor(endpoint=_url(server, name), ssh_options=_ssh_options(server), remote_command=REMOTE_FAAS)
    with pytest.raises(EndpointError, match="not found"):  # no faas-endpoint on the remote PATH
        Executor(endpoint=_url(server, name), ssh_options=_ssh_options(server))


def test_killed_tunnel_is_restarted_and_every_invocation_runs_once(remote, tmp_path):
    N = 300
    server, name, home = remote
    before = status(name)["invocations"]["succeeded"]
    log = tmp_path / "runs.log"
    fn = ctx_function(model=lambda path: {"log": path}, path=str(log))(logged_triple)
    ex = Executor(endpoint=_url(server, name), ssh_options=_ssh_options(server), remote_faas_home=str(home))
    try:
        tunnel = ex._transport.tunnel
        futures = [ex.submit(fn, x) for x in range(N)]
        while sum(f.done() for f in futures) < 20:
            time.sleep(0.02)
        for kills in (1, 2):  # the second as soon as the first restart has reconnected
            while ex._conn.connects < kills:
                time.sleep(0.02)
            assert not all(f.done() for f in futures)
            os.kill(tunnel.pid, signal.SIGKILL)  # the ssh process this Executor started
        assert [f.result(timeout=120) for f in futures] == [3 * x for x in range(N)]
        assert tunnel.restarts == 2 and ex._conn.connects >= 3
    finally:
        ex.shutdown(cancel_futures=True)
    runs = log.read_text().split()
    assert sorted(map(int, runs)) == list(range(N)), "an invocation ran twice or never"
    assert status(name)["invocations"]["succeeded"] == before + N

