"""Serves a node's cache of context files to other nodes' fetchers.

One thread, one ROUTER socket on CurveZMQ: the endpoint hands every loop the
file servers' key pair and the fetchers' client key pair, and the server's
authenticator admits that client key alone. A fetcher opens a copy of a
context (its manifest comes back, or ``wait``: this node is staging it, or
``busy``: this loop serves ``max_serving`` copies already, or ``failed``: its
stage here failed, or ``none``) and
then reads its blobs in chunks, (blob, offset, length) at a time, a few in
flight. A copy holds its slot until it closes it or stays silent for
``SESSION_IDLE`` seconds (its fetcher died). Before each chunk the blob's
stat is checked against its last hash check: a blob changed since is not
served (``gone``) and is hashed again in the background, as is one a fetcher
reports as not matching its hash (``suspect``). Serving is paced to
``serve_bandwidth`` bytes per second in all, when set.

Requests and replies are a JSON frame each, a reply to ``read`` followed by
the bytes; every request carries a number ``n`` that its reply repeats.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Annotated, Literal

import zmq
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from zmq.auth.thread import ThreadAuthenticator

from faas.warm_pool.node_cache import Manifest, NodeCache

log = logging.getLogger(__name__)
ZAP_DOMAIN = "faas-files"
MAX_CHUNK = 8 * 2**20
SESSION_IDLE = 15.0  # seconds a copy keeps its slot without a request
STAGING_SILENT = 30.0  # a stage whose progress file is older than this is not waited for
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class FileRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    op: Literal["open", "read", "close", "suspect"]
    n: int = 0
    key: Name | None = None  # open: the context
    session: Name | None = None  # read, close
    blob: Name | None = None  # read, suspect
    offset: Annotated[int, Field(ge=0)] = 0
    length: Annotated[int, Field(ge=0, le=MAX_CHUNK)] = 0


class FileServer:
    def __init__(self, cache: NodeCache, server_keys: tuple[bytes, bytes], client_public: bytes, host: str,
                 max_serving: int, bandwidth: int | None, on_change: Callable[[], None],
                 on_bad_blob: Callable[[str], None]):
        self.cache = cache
        self.max_serving = max_serving
        self.bandwidth = bandwidth
        self.on_change = on_change
        self.on_bad_blob = on_bad_blob
        self._client_public = client_public
        self._sessions: dict[str, tuple[Manifest, float]] = {}  # id -> (its context's manifest, last request)
        self._due: deque[tuple[float, bytes, FileRequest]] = deque()  # reads held back by the pacing
        self._next_send = 0.0
        self._checking: set[str] = set()
        self.served = 0  # bytes, in all
        self._stop = threading.Event()
        self._zctx = zmq.Context()
        self._auth = ThreadAuthenticator(self._zctx, log=log.getChild("zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, self)
        self.sock = self._zctx.socket(zmq.ROUTER)
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = server_keys
        port = self.sock.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self._thread = threading.Thread(target=self._serve, name="faas-file-server", daemon=True)
        self._thread.start()

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: only the endpoint's loops hold the fetchers' key."""
        return key == self._client_public

    @property
    def serving(self) -> int:
        return len(self._sessions)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self._auth.stop()
        self._zctx.term()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            wait = 0.2 if not self._due else max(0.0, min(0.2, self._due[0][0] - time.monotonic()))
            if poller.poll(int(wait * 1000)):
                while self.sock.poll(0):
                    frames = self.sock.recv_multipart()
                    try:
                        self._handle(frames[0], frames[1:])
                    except Exception:  # a bug must not end serving for every fetcher
                        log.exception("file server: handling a request failed")
            while self._due and self._due[0][0] <= time.monotonic():
                _, ident, req = self._due.popleft()
                self._read(ident, req)
            self._expire()

    def _reply(self, ident: bytes, req_n: int, status: str, data: bytes | None = None, **fields) -> None:
        header = json.dumps({"n": req_n, "status": status, **fields}).encode()
        try:
            self.sock.send_multipart([ident, header, *([data] if data is not None else [])], zmq.NOBLOCK,
                                     copy=False)
        except zmq.ZMQError as e:
            log.debug("file server: cannot reply: %s", e)

    def _handle(self, ident: bytes, frames: list[bytes]) -> None:
        try:
            req = FileRequest.model_validate_json(frames[0]) if len(frames) == 1 else None
        except ValidationError:
            req = None
        if req is None:
            self._reply(ident, 0, "error", error="malformed request")
        elif req.op == "open":
            self._open(ident, req)
        elif req.op == "read":
            if self.bandwidth:
                now = time.monotonic()
                at = max(now, self._next_send)
                self._next_send = at + req.length / self.bandwidth
                if at > now or self._due:
                    self._due.append((at, ident, req))
                    return
            self._read(ident, req)
        elif req.op == "close":
            if self._sessions.pop(req.session or "", None) is not None:
                self.on_change()
            self._reply(ident, req.n, "ok")
        else:
            self._check(req.blob or "")
            self._reply(ident, req.n, "ok")

    def _open(self, ident: bytes, req: FileRequest) -> None:
        manifest = self.cache.manifest(req.key) if req.key else None
        changed = [f.hash for f in manifest.files if not self.cache.looks_intact(f.hash, f.size)] if manifest else []
        for digest in changed:  # not served until hashed again
            self._check(digest)
        if manifest is None or changed:
            progress = self.cache.progress(req.key) if req.key else None
            failure = self.cache.failure(req.key) if req.key else None
            if progress is not None and progress[1] < STAGING_SILENT:
                self._reply(ident, req.n, "wait", progress=progress[0])
            elif failure is not None and failure[1] < STAGING_SILENT:
                self._reply(ident, req.n, "failed", error=failure[0])
            else:
                self._reply(ident, req.n, "none")
        elif len(self._sessions) >= self.max_serving:
            self._reply(ident, req.n, "busy", progress=self.served)
        else:
            session = uuid.uuid4().hex
            self._sessions[session] = (manifest, time.monotonic())
            self.on_change()
            self._reply(ident, req.n, "ok", session=session, manifest=manifest.dumps())

    def _read(self, ident: bytes, req: FileRequest) -> None:
        entry = self._sessions.get(req.session or "")
        if entry is None:
            self._reply(ident, req.n, "expired")
            return
        manifest, _ = entry
        self._sessions[req.session] = (manifest, time.monotonic())
        if not any(f.hash == req.blob for f in manifest.files):
            self._reply(ident, req.n, "error", error="not a blob of this context")
            return
        if not self.cache.looks_intact(req.blob):
            self._reply(ident, req.n, "gone")
            self._check(req.blob)
            return
        try:
            fd = os.open(self.cache.blob(req.blob), os.O_RDONLY)
            try:
                data = os.pread(fd, req.length, req.offset)
            finally:
                os.close(fd)
        except OSError:
            self._reply(ident, req.n, "gone")
            self._check(req.blob)
            return
        self.served += len(data)
        self._reply(ident, req.n, "ok", data)

    def _expire(self) -> None:
        now = time.monotonic()
        idle = [s for s, (_, last) in self._sessions.items() if now - last > SESSION_IDLE]
        for s in idle:
            del self._sessions[s]
        if idle:
            self.on_change()

    def _check(self, digest: str) -> None:
        """Hash a blob again, away from serving; one that no longer matches is removed and reported."""
        try:
            self.cache.blob(digest)
        except ValueError:
            return
        if digest in self._checking:
            return
        self._checking.add(digest)

        def check() -> None:
            try:
                if not self.cache.verify(digest):
                    log.warning("blob %s of the node cache no longer matches its hash: removed", digest)
                    self.on_bad_blob(digest)
            finally:
                self._checking.discard(digest)

        threading.Thread(target=check, name="faas-blob-check", daemon=True).start()
