"""This worker process's side of context files: its node cache, its file
server while a loop runs, the peers the endpoint named, and the figures the
loop reports (:class:`~faas.protocol.FilesState`).

A context that names files (``files=`` of a loader, or a ``model`` that is an
absolute folder path) has them staged before its loader runs
(:meth:`NodeFiles.stage`): found in the node cache (checked), or copied into
it (:mod:`faas.warm_pool.fetcher`) by one worker of the node while the node's
others wait on its lock. Outside a worker loop (a direct call, a Globus
Compute task) nothing is served and the files come from their source.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout

from faas import protocol
from faas.warm_pool.fetcher import STALL, CopyError, Fetcher
from faas.warm_pool.fileserver import FileServer
from faas.warm_pool.node_cache import Manifest, NodeCache, default_root

log = logging.getLogger(__name__)
LOCATE_TIMEOUT = 10.0  # seconds for the endpoint's answer; none: read the source
BYTES_EVERY = 0.5  # seconds between reports of byte counters alone


@dataclass(frozen=True)
class FilesSetup:
    """What a loop is handed (made by the endpoint, inside the loop's Parsl task as the worker link's keys)."""

    server_public: bytes  # one CurveZMQ pair for every loop's file server
    server_secret: bytes
    client_public: bytes  # one pair for every loop's fetchers: the only key file servers admit
    client_secret: bytes
    node_cache: str | None = None  # None: $FAAS_NODE_CACHE, else the node's temp folder
    per_worker: bool = False  # tests and benchmarks: each worker process its own cache
    peer_copy: bool = True
    max_serving: int = 2
    serve_bandwidth: int | None = None  # bytes/s served in all


class NodeFiles:
    def __init__(self) -> None:
        self.cache = NodeCache(default_root())
        self.setup: FilesSetup | None = None
        self.server: FileServer | None = None
        self.wake_fd, self._wake_w = os.pipe()  # readable when there is something to report; any thread writes
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self.send_locate: Callable[[str], None] | None = None  # asks the endpoint (through the loop)
        self._lock = threading.Lock()
        self._hints: dict[str, list[str]] = {}
        self._answers: dict[str, tuple[threading.Event, list[str]]] = {}
        self.staged: set[str] = set()
        self.staging: set[str] = set()
        self.source_bytes: Counter[str] = Counter()
        self.peer_bytes: Counter[str] = Counter()
        self._sent: protocol.FilesState | None = None
        self._sent_at = 0.0
        self._woken_at = 0.0
        self._version = 0  # counts changes, so that an unchanged state costs the loop nothing to check
        self._sent_version = -1

    # -- a loop attaches and detaches ---------------------------------------------
    def attach(self, setup: FilesSetup, endpoint: str) -> protocol.FilesState:
        """A loop starts: the node cache it was told of, and a file server on the
        address toward ``endpoint`` (tcp://HOST:PORT, where the loop reaches its
        endpoint). The loop then sets :attr:`send_locate` and watches :attr:`wake_fd`."""
        root = Path(os.path.expandvars(setup.node_cache)).expanduser() if setup.node_cache else default_root()
        if setup.per_worker:
            root = root / f"worker-{socket.gethostname()}-{os.getpid()}"
        if self.server is not None and (setup != self.setup or root != self.cache.root):
            self.detach()
        self.setup, self.cache = setup, NodeCache(root)
        self.cache.ensure()
        with self._lock:
            self.staged = set(self.cache.staged_keys())
        host = _route_to(endpoint)
        if setup.peer_copy and (self.server is None or not self.server.address.startswith(f"tcp://{host}:")):
            if self.server is not None:
                self.server.stop()
            self.server = FileServer(self.cache, (setup.server_public, setup.server_secret), setup.client_public,
                                     host, setup.max_serving, setup.serve_bandwidth, self._wake, self._bad_blob)
        self._sent, self._sent_at, self._sent_version = self.state(), time.monotonic(), self._version
        return self._sent

    def detach(self) -> None:
        """The loop ended: nothing served, nobody to ask."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.send_locate = None

    # -- the endpoint's side ----------------------------------------------------
    def hint(self, peers: dict[str, list[str]]) -> None:
        with self._lock:
            self._hints.update(peers)

    def answer(self, key: str, addresses: list[str]) -> None:
        """The endpoint's ``Peers``, for a :meth:`locate` waiting on it."""
        with self._lock:
            waiting = self._answers.get(key)
        if waiting is not None:
            waiting[1][:] = addresses
            waiting[0].set()

    def locate(self, key: str) -> list[str]:
        """Fresh holders of ``key``'s files, from the endpoint; none (or no answer in time): read the source."""
        send = self.send_locate
        if send is None:
            return []
        event, addresses = threading.Event(), []
        with self._lock:
            self._answers[key] = (event, addresses)
        try:
            send(key)
            if not event.wait(LOCATE_TIMEOUT):
                log.warning("the endpoint did not say who holds the files of %s within %gs", key, LOCATE_TIMEOUT)
            return list(addresses)
        finally:
            with self._lock:
                self._answers.pop(key, None)

    def state(self) -> protocol.FilesState:
        with self._lock:
            return protocol.FilesState(
                address=self.server.address if self.server is not None else None,
                node=f"{socket.gethostname()}:{self.cache.root}", staged=sorted(self.staged),
                staging=sorted(self.staging), serving=self.server.serving if self.server is not None else 0,
                source_bytes=dict(self.source_bytes), peer_bytes=dict(self.peer_bytes))

    def changed(self) -> protocol.FilesState | None:
        """The state to report, when it changed since the last report (the byte
        counters alone: at most every ``BYTES_EVERY`` seconds)."""
        version = self._version
        if self.setup is None or version == self._sent_version:
            return None
        state, last, now = self.state(), self._sent, time.monotonic()
        if last is not None and state.model_dump(exclude={"source_bytes", "peer_bytes"}) == last.model_dump(
                exclude={"source_bytes", "peer_bytes"}):
            if (state.source_bytes, state.peer_bytes) == (last.source_bytes, last.peer_bytes) \
                    or now - self._sent_at < BYTES_EVERY:
                return None
        self._sent, self._sent_at, self._sent_version = state, now, version
        return state

    # -- staging ----------------------------------------------------------------
    def stage(self, key: str, files: str | tuple[str, ...]) -> Path | list[Path]:
        """The node-local copy of a context's files: a folder (or file) for a
        path, a list of them for a list."""
        sources = [files] if isinstance(files, str) else list(files)
        top = self.cache.view(self._stage(key, sources))
        local = [top / str(i) / Path(os.path.normpath(os.path.expanduser(s))).name for i, s in enumerate(sources)]
        return local[0] if isinstance(files, str) else local

    def _stage(self, key: str, sources: list[str]) -> Manifest:
        self.cache.ensure()
        manifest = self.cache.staged(key)
        if manifest is None:
            with self._node_lock(key):
                manifest = self.cache.staged(key)  # another worker of the node may have staged it meanwhile
                if manifest is None:
                    manifest = self._fetch(key, sources)
        with self._lock:
            self.staged.add(key)
        self._wake()
        return manifest

    def _fetch(self, key: str, sources: list[str]) -> Manifest:
        with self._lock:
            self.staged.discard(key)
            peers = list(self._hints.get(key, ()))
        setup = self.setup
        keys = (setup.server_public, setup.client_public, setup.client_secret) \
            if setup is not None and setup.peer_copy else None
        self.cache.clean_partials(older_than=2 * STALL)
        self.cache.clear_failed(key)
        try:
            return Fetcher(self.cache, key, sources, peers, self.locate, keys,
                           self.server.address if self.server is not None else None,
                           lambda kind, n: self._count(key, kind, n)).run()
        except Exception as e:  # the node's peers tell their fetchers, who then do not wait for it
            self.cache.mark_failed(key, f"{type(e).__name__}: {e}")
            raise
        finally:
            self.cache.clear_progress(key)
            with self._lock:
                self.staging.discard(key)
            self._wake()

    def _node_lock(self, key: str):
        """The node's lock of the context: waits while the worker holding it
        stages the files (its progress file stays fresh as bytes come in; it
        may first wait up to STALL for its peers)."""
        lock = self.cache.lock(key)
        started = time.monotonic()
        while True:
            try:
                return lock.acquire(timeout=1.0)  # released when its with-block ends
            except Timeout:
                progress = self.cache.progress(key)
                silent = progress[1] if progress is not None else time.monotonic() - started
                if silent > 2 * STALL:
                    raise CopyError(f"another worker of this node has been staging the files of context {key} "
                                    f"without progress for {silent:.0f}s (lock {lock.lock_file})") from None

    def _count(self, key: str, kind: str, n: int) -> None:
        """Bytes came in: the context is staging (only from now on: a loop that
        merely waits for a peer is no peer to wait for)."""
        with self._lock:
            (self.source_bytes if kind == "source" else self.peer_bytes)[key] += n
            first = key not in self.staging
            self.staging.add(key)
        self._wake(now=first)

    def _wake(self, now: bool = True) -> None:
        """Something changed (on any thread): the loop reports it; byte counts
        alone at most every BYTES_EVERY seconds (it looks every second anyway)."""
        self._version += 1
        if now or time.monotonic() - self._woken_at >= BYTES_EVERY:
            self._woken_at = time.monotonic()
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:  # full: the loop is awake anyway
                pass

    def drain(self) -> None:
        """The loop read the wake-ups."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _bad_blob(self, digest: str) -> None:
        """The file server found a blob that no longer matches its hash: its contexts are no longer staged here."""
        with self._lock:
            for key in list(self.staged):
                manifest = self.cache.manifest(key)
                if manifest is None or any(f.hash == digest for f in manifest.files):
                    self.staged.discard(key)
        self._wake()


def _route_to(endpoint: str) -> str:
    """This node's address on the route to ``endpoint`` (where the others reach it too)."""
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # no packet is sent: this only picks the route
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


@functools.cache
def process_files() -> NodeFiles:
    """This process's context files."""
    return NodeFiles()
