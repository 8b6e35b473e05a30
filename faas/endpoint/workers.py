"""The endpoint's side of the worker loops (see faas.warm_pool.loop).

A ROUTER socket, on the address workers use for Parsl's interchange, protected
by CurveZMQ: the endpoint makes a fresh server key pair and one client key pair
for its workers at start, hands the client keys to each loop inside its Parsl
task (over Parsl's own encrypted channel), and its authenticator admits that
client key alone. A peer without it cannot connect, so no byte of a payload or
a forged result crosses this socket unauthenticated.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


@dataclass
class WorkerLoop:
    """One loop task: known from submission, connected once it says ready."""

    token: str
    future: Future | None = None
    host: str = ""
    pid: int = 0
    ready: bool = False
    contexts: dict[str, dict] = field(default_factory=dict)  # its warm pool's statistics
    batches: dict = field(default_factory=dict)  # batch id -> Batch assigned, not yet done
    sent_functions: set[str] = field(default_factory=set)
    idle_since: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)  # context -> invocations/s, smoothed

    def measured(self, key: str, n: int, seconds: float) -> None:
        """Per context: its functions' costs differ, and so do the workers' speeds."""
        if n and seconds > 0:
            old = self.rates.get(key)
            self.rates[key] = n / seconds if old is None else 0.7 * old + 0.3 * n / seconds

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    def holds(self, key: str) -> bool:
        """Loaded, or about to be: a batch of it is on its way to this loop."""
        return bool(self.contexts.get(key, {}).get("loaded")) or any(
            b.context_key == key for b in self.batches.values())


class WorkerLink:
    def __init__(self, zctx: zmq.Context, address: str | None):
        self.server_public, server_secret = zmq.curve_keypair()
        self.client_public, self.client_secret = zmq.curve_keypair()
        self._keys = tempfile.TemporaryDirectory(prefix="faas-worker-keys-")
        Path(self._keys.name, "worker.key").write_bytes(
            b"metadata\ncurve\n    public-key = \"" + self.client_public + b"\"\n")
        self.auth = ThreadAuthenticator(zctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=self._keys.name)
        self.sock = zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = self.server_public, server_secret
        port = self.sock.bind_to_random_port(f"tcp://{address or '*'}")
        self.addresses = [f"tcp://{a}:{port}" for a in ([address] if address else _all_addresses())]

    def send(self, token: str, frames: list[bytes]) -> bool:
        try:
            self.sock.send_multipart([token.encode(), *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            log.warning("cannot reach worker loop %s: %s", token, e)
            return False

    def close(self) -> None:
        self.sock.close(0)
        self.auth.stop()
        self._keys.cleanup()


def _all_addresses() -> list[str]:
    from parsl.addresses import get_all_addresses

    return sorted(get_all_addresses())
