"""The endpoint's side of the worker loops (see faas.warm_pool.loop).

A ROUTER socket, on the address workers use for Parsl's interchange, protected
by CurveZMQ: the endpoint makes a fresh server key pair and one client key pair
for its workers at start, hands the client keys to each loop inside its Parsl
task (over Parsl's own encrypted channel), and its authenticator (one per
ZeroMQ context, shared with the tcp:// listeners under another ZAP domain)
admits that client key alone on this socket. A peer without it cannot connect, so no byte of a payload or
a forged result crosses this socket unauthenticated. The loops' file servers and fetchers (context files
copied between nodes) get their own two key pairs the same way (:class:`FilesSetup`).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from faas import protocol
from faas.endpoint.config import WarmPoolConfig
from faas.warm_pool.files import FilesSetup

log = logging.getLogger(__name__)
ZAP_DOMAIN = "faas-workers"


@dataclass
class LoopBatch:
    """A batch sent to a loop: its invocations not finished yet, and when its
    first started and last finished (on the worker's clock), to measure speed."""

    id: int
    context_key: str
    size: int
    open: set[str]  # invocation ids
    first_started: float = math.inf
    last_finished: float = 0.0
    loading: float = 0.0  # seconds of it spent loading its context: not the functions' speed


@dataclass
class WorkerLoop:
    """One loop task: known from submission, connected once it says ready."""

    token: str
    future: Future | None = None
    host: str = ""
    pid: int = 0
    ready: bool = False
    contexts: dict[str, dict] = field(default_factory=dict)  # its warm pool's statistics
    prewarm: dict[str, Any] = field(default_factory=dict)  # its start-up timings (faas.warm_pool.prewarm)
    files: dict[str, Any] = field(default_factory=dict)  # its node cache and file server (protocol.FilesState)
    resources: dict[str, Any] = field(default_factory=dict)  # its memory and GPU (faas.warm_pool.resources)
    batches: dict[int, LoopBatch] = field(default_factory=dict)  # sent, not finished
    running: dict[str, float] = field(default_factory=dict)  # invocation id -> when it started (monotonic)
    sent_functions: set[str] = field(default_factory=set)
    idle_since: float = 0.0
    last_heard: float = 0.0  # monotonic
    rates: dict[str, float] = field(default_factory=dict)  # context -> invocations/s, smoothed
    preloading: str | None = None  # the context it was asked to preload, until it says the load ended
    kept: frozenset[str] = frozenset()  # the contexts it was last told to keep

    def measured(self, key: str, n: int, seconds: float) -> None:
        """Per context: its functions' costs differ, and so do the workers' speeds."""
        if n and seconds > 0:
            old = self.rates.get(key)
            self.rates[key] = n / seconds if old is None else 0.7 * old + 0.3 * n / seconds

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    def outstanding(self) -> int:
        return sum(len(b.open) for b in self.batches.values())


class WorkerLink:
    def __init__(self, zctx: zmq.Context, auth: ThreadAuthenticator, address: str | None,
                 warm_pool: WarmPoolConfig | None = None):
        self.server_public, server_secret = zmq.curve_keypair()
        self.client_public, self.client_secret = zmq.curve_keypair()
        wp = warm_pool or WarmPoolConfig()
        self.files = FilesSetup(*zmq.curve_keypair(), *zmq.curve_keypair(), node_cache=wp.node_cache,
                                per_worker=wp.node_cache_per_worker, peer_copy=wp.peer_copy,
                                max_serving=wp.max_serving,
                                serve_bandwidth=int(wp.serve_bandwidth) if wp.serve_bandwidth else None)
        auth.configure_curve_callback(ZAP_DOMAIN, self)
        self.sock = zctx.socket(zmq.ROUTER)
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = self.server_public, server_secret
        port = self.sock.bind_to_random_port(f"tcp://{address or '*'}")
        self.addresses = [f"tcp://{a}:{port}" for a in ([address] if address else _all_addresses())]

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: only this endpoint's worker loops hold the client key."""
        return key == self.client_public

    def send(self, token: str, frames: list[bytes]) -> bool:
        try:
            protocol.send(self.sock, [token.encode(), *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            log.warning("cannot reach worker loop %s: %s", token, e)
            return False

    def readable(self) -> bool:
        """Whether a loop's message waits to be read."""
        return bool(self.sock.get(zmq.EVENTS) & zmq.POLLIN)

    def close(self) -> None:
        self.sock.close(0)


def _all_addresses() -> list[str]:
    from parsl.addresses import get_all_addresses

    return sorted(get_all_addresses())
