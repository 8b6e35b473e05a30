"""tcp:// endpoints with CurveZMQ keys: who gets in, who does not (and runs
nothing), revocation on a live daemon, a connection cut mid-run, and the
owner-only files that hold the secrets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq
from conftest import RunningEndpoint, cli, local_config, status, write_config

from faas import Executor, ctx_function, protocol
from faas.endpoint.cli import endpoint_status
from faas.endpoint.config import ConfigError, load_config
from faas.errors import EndpointError, NotAuthorised
from faas.home import EndpointDir
from faas.keys import client_pair

NAME = "tcp"


@pytest.fixture(scope="module")
def tcp_endpoint(tmp_path_factory):
    """(endpoint folder, its tcp:// address, its public key), running for the module."""
    home = tmp_path_factory.mktemp("tcp") / "faas-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAAS_HOME", str(home))
        write_config(home, NAME, local_config(workers=2, extra="listen: [tcp://127.0.0.1:0]\n"))
        ep = RunningEndpoint(home, NAME)
        ep.start()
        try:
            info = status(NAME)
            (address,) = [a for a in info["addresses"] if a.startswith("tcp://")]
            yield ep.path, address, info["public_key"]
        finally:
            ep.stop()


def keygen(client_home: Path) -> tuple[str, Path]:
    """A client key pair made by `faas keygen` under its own FAAS_HOME: (public key, secret file)."""
    out = subprocess.run([sys.executable, "-m", "faas.cli", "keygen"], capture_output=True, text=True,
                         check=True, env={**os.environ, "FAAS_HOME": str(client_home)}).stdout
    return out.strip(), client_home / "keys" / "client.key_secret"


@ctx_function(model=dict)
def double(ctx, x):
    return 2 * x


def invocations() -> dict[str, int]:
    """Counts by state from the store (in-process: the CLI's own view is checked once per test)."""
    return endpoint_status(EndpointDir.of(NAME))["invocations"]


def test_only_authorised_keys_get_in(tcp_endpoint, tmp_path):
    folder, address, server_key = tcp_endpoint
    before = invocations()

    # unknown key: this user's default pair, made on first use; refused at once, in the handshake
    started = time.monotonic()
    with pytest.raises(NotAuthorised, match="handshake refused.*faas-endpoint authorize NAME") as info:
        Executor(endpoint=address, server_key=server_key)
    assert time.monotonic() - started < 5
    assert client_pair().public_text in str(info.value)

    # no server key, a wrong server key, and no CURVE at all: nothing gets through
    with pytest.raises(EndpointError, match="needs server_key"):
        Executor(endpoint=address)
    public, secret = keygen(tmp_path / "laptop")
    with pytest.raises(EndpointError, match="not authorised or unreachable"):
        Executor(endpoint=address, server_key=public, client_key=secret, connect_timeout=2)
    _raw_submit_gets_no_answer(address)
    assert invocations() == before

    # authorised: works, and the key shows in status
    assert "authorised" in cli("authorize", NAME, public, "--comment", "laptop").stdout
    assert {"key": public, "comment": "laptop"} in status(NAME)["authorized_clients"]
    ex = Executor(endpoint=address, server_key=server_key, client_key=secret)
    try:
        assert list(ex.map(double, range(10))) == [2 * x for x in range(10)]
        done = invocations()
        assert done["succeeded"] == before["succeeded"] + 10

        # revoked while connected: the open connection is refused too
        assert "revoked" in cli("revoke", NAME, public).stdout
        with pytest.raises(NotAuthorised, match="no longer authorised"):
            ex.submit(double, 1).result(timeout=10)
        with pytest.raises(NotAuthorised):
            ex.submit(double, 2)
    finally:
        ex.shutdown(cancel_futures=True)  # a test that fails must not wait for lost futures
    with pytest.raises(NotAuthorised, match="handshake refused"):
        Executor(endpoint=address, server_key=server_key, client_key=secret)
    assert status(NAME)["invocations"] == done  # faas-endpoint status --json


def _raw_submit_gets_no_answer(address: str) -> None:
    """A well-formed submit from a peer without CURVE is never read."""
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(address)
        fid, inv = uuid.uuid4().hex, uuid.uuid4().hex
        sock.send_multipart(protocol.encode(protocol.Submit(
            group="g", functions=[protocol.FunctionInfo(id=fid, name="f", context_key="k", context="c")],
            invocations=[protocol.InvocationRef(id=inv, function=fid)]), [b"not a function", b"not arguments"]))
        assert not sock.poll(1500)
    finally:
        sock.close(0)
        zctx.term()


class CuttableProxy:
    """A loopback TCP proxy whose open connections the test can cut."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refuse_until = 0.0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def cut(self, refuse_for: float = 0.0) -> None:
        self.refuse_until = time.monotonic() + refuse_for
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            _shut(s)

    def close(self) -> None:
        _shut(self.listener)
        self.cut()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _shut(src)
        _shut(dst)


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def logged_double(ctx, x):
    with open(ctx["log"], "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.02)
    return 2 * x


def test_connection_cut_mid_run_completes_everything_once(tcp_endpoint, tmp_path):
    N = 300
    folder, address, server_key = tcp_endpoint
    public, secret = keygen(tmp_path / "laptop")
    cli("authorize", NAME, public)
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    log = tmp_path / "runs.log"
    fn = ctx_function(model=lambda path: {"log": path}, path=str(log))(logged_double)
    before = invocations()["succeeded"]
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(cli, "revoke", NAME, public)
        proxy = CuttableProxy((host, int(port)))
        cleanup.callback(proxy.close)
        ex = Executor(endpoint=f"tcp://127.0.0.1:{proxy.port}", server_key=server_key, client_key=secret)
        cleanup.callback(ex.shutdown, cancel_futures=True)  # a failed check must not wait for lost futures
        futures = [ex.submit(fn, x) for x in range(N)]
        while sum(f.done() for f in futures) < 20:
            time.sleep(0.02)
        for cuts in (1, 2):  # the second as soon as the link is back
            while ex._conn.connects < cuts:
                time.sleep(0.02)
            assert not all(f.done() for f in futures)
            proxy.cut(refuse_for=0.5)  # reconnects fail for a while: ZeroMQ backs off and retries
        assert [f.result(timeout=120) for f in futures] == [2 * x for x in range(N)]
        assert ex._conn.connects >= 3
    assert sorted(map(int, log.read_text().split())) == list(range(N)), "an invocation ran twice or never"
    assert status(NAME)["invocations"]["succeeded"] == before + N


def test_secrets_are_owner_only(tcp_endpoint, tmp_path):
    folder, address, server_key = tcp_endpoint
    public, secret = keygen(tmp_path / "laptop")
    cli("authorize", NAME, public)
    cli("revoke", NAME, public)
    mode = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for name in ("endpoint.sock", "endpoint.key", "endpoint.key_secret", "authorized_clients",
                 "store.db", "store.db-wal", "store.db-shm", "endpoint.log"):
        assert mode[name] == "0o600", (name, mode[name])
    assert oct(secret.parent.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in secret.parent.glob("client.key*")} == {"0o600"}
    assert json.loads(cli("status", NAME, "--json").stdout)["public_key"] == server_key


@pytest.mark.parametrize("address, ok", [
    ("tcp://127.0.0.1:0", True), ("tcp://*:5555", True), ("tcp://[::1]:5555", True),
    ("tcp://login.example.org:*", True), ("ipc:///tmp/x.sock", False), ("tcp://127.0.0.1", False),
    ("tcp://127.0.0.1:70000", False), ("127.0.0.1:5555", False),
])
def test_listen_addresses_are_checked(tmp_path, address, ok):
    config = tmp_path / "config.yaml"
    config.write_text(f"listen: ['{address}']\n")
    if ok:
        assert load_config(config).listen == [address]
    else:
        with pytest.raises(ConfigError, match="listen"):
            load_config(config)
