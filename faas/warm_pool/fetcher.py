"""Copies a context's files into the node cache: from a peer (another node's
cache) whenever one holds them, from their source only when none does.

- The source is read, and hashed, once per fleet: by the loop that finds no
  peer (the endpoint names it the context's reader). It writes the manifest
  (each file's size and hash) as it copies; the others get the manifest from
  the peer they copy from, and check every file they copy against it.
- A peer answers ``wait`` while it stages the files itself, ``busy`` while it
  serves ``max_serving`` copies; the fetcher asks its other peers, and the
  endpoint (``Locate``) every few seconds, for fresh ones.
- A copy keeps its running hash: when its peer dies (the connection drops, or
  a chunk does not come within ``READ_TIMEOUT``) it goes on from where it
  stopped, from another holder or from the source.
- A file whose bytes do not match its hash is never kept: its peers are told
  (they hash their copy again) and not asked again, and it is copied again.
- Every wait ends: with no progress from any peer for ``STALL`` seconds the
  fetcher stops waiting for them and reads the source; what cannot be read
  fails the load with :class:`CopyError`, naming the path and the cause.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from faas.errors import FaasError
from faas.warm_pool.node_cache import READ_CHUNK, FileEntry, Manifest, NodeCache, new_hash, source_listing

log = logging.getLogger(__name__)
CHUNK = 2**20  # bytes per read from a peer: CurveZMQ moves 1 MiB messages ~5x faster than 4 MiB ones (measured)
WINDOW = 8  # reads in flight to one peer
OPEN_TIMEOUT = 5.0  # seconds for a peer's answer to open a copy
READ_TIMEOUT = 15.0  # seconds for a chunk
POLL = 0.25  # seconds between asks while every peer waits or is busy
LOCATE_EVERY = 3.0  # seconds between asks to the endpoint for fresh peers, meanwhile
STALL = 60.0  # seconds without progress from any peer: stop waiting for them
NONE_WAIT = 8.0  # seconds a peer named by the endpoint may say it has nothing (a reader about to start)
MAX_BAD_COPIES = 3  # copies of one file that did not match its hash, before the load fails
PROGRESS_EVERY = 0.5  # seconds between updates of the node's progress file
_FAILED = (zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class CopyError(FaasError):
    """A context's files could not be staged in the node cache."""


class PeerFailed(Exception):
    pass


class Peer:
    """A CurveZMQ DEALER to one peer's file server, watched for a dropped connection."""

    def __init__(self, zctx: zmq.Context, address: str, keys: tuple[bytes, bytes, bytes]):
        self.address = address
        self.sock = zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # a peer gone without a word is dropped too
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = keys
        self.monitor = self.sock.get_monitor_socket(_FAILED)
        self.sock.connect(address)
        self._n = 0

    def send(self, **request) -> int:
        self._n += 1
        self.sock.send(json.dumps({**request, "n": self._n}).encode())
        return self._n

    def recv(self, n: int, timeout: float) -> tuple[dict, memoryview | None]:
        """The reply to request ``n``; PeerFailed when the connection drops or no reply comes in time."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if self.monitor in events:
                event = recv_monitor_message(self.monitor)
                raise PeerFailed(f"connection lost ({zmq.Event(event['event']).name})")
            if self.sock not in events:
                raise PeerFailed(f"no answer within {timeout:g}s")
            frames = self.sock.recv_multipart(copy=False)
            try:
                reply = json.loads(frames[0].bytes)
            except ValueError:
                raise PeerFailed("malformed reply") from None
            if reply.get("n") == n:
                return reply, (frames[1].buffer if len(frames) > 1 else None)

    def ask(self, timeout: float, **request) -> dict:
        return self.recv(self.send(**request), timeout)[0]

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


@dataclass
class _Holder:
    peer: Peer
    session: str
    manifest: Manifest


class _Partial:
    """A file being copied, with its running hash: resumable from ``offset`` by any source."""

    def __init__(self, cache: NodeCache, tag: str):
        self.path = cache.partial(tag)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by finish() or discard()
        self.hash = new_hash()
        self.offset = 0
        self.sources: set[str] = set()  # peers (addresses) and "source" that wrote to it

    def write(self, data) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.offset += len(data)

    def finish(self) -> str:
        self.file.close()
        return self.hash.hexdigest()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class Fetcher:
    """One stage of one context's files (run while holding the node's lock of the context)."""

    def __init__(self, cache: NodeCache, key: str, sources: list[str], peers: list[str],
                 locate: Callable[[str], list[str]] | None, keys: tuple[bytes, bytes, bytes] | None,
                 own_address: str | None, count: Callable[[str, int], None]):
        self.cache = cache
        self.key = key
        self.sources = sources
        self.locate = locate if keys is not None else None
        self.keys = keys
        self.own = own_address
        self.count = count  # ("source" | "peer", bytes)
        self.peers = [p for p in peers if p != own_address] if keys is not None else []
        self.bad: set[str] = set()  # peers not asked again during this stage
        self.holder: _Holder | None = None
        self.done = 0
        self.total = 0
        self._zctx: zmq.Context | None = None
        self._links: dict[str, Peer] = {}
        self._partial: _Partial | None = None
        self._progress_at = 0.0

    def run(self) -> Manifest:
        try:
            self.holder = self._find_holder(None)
            if self.holder is None:
                return self._read_source()
            manifest = self.holder.manifest
            self.total = manifest.total
            for entry in manifest.files:
                if self.cache.has(entry.hash, entry.size):
                    self.done += entry.size
                else:
                    self._copy(manifest, entry)
            self.cache.write_manifest(manifest)
            return manifest
        finally:
            if self._partial is not None:
                self._partial.discard()
            if self.holder is not None:  # its slot is free for the next fetcher at once
                try:
                    self.holder.peer.ask(OPEN_TIMEOUT, op="close", session=self.holder.session)
                except PeerFailed:
                    pass
            for link in self._links.values():
                link.close()
            if self._zctx is not None:
                self._zctx.term()

    # -- peers -----------------------------------------------------------------
    def _link(self, address: str) -> Peer:
        if address not in self._links:
            if self._zctx is None:
                self._zctx = zmq.Context()
            self._links[address] = Peer(self._zctx, address, self.keys)
        return self._links[address]

    def _drop(self, address: str, why: str) -> None:
        log.info("context %s: not copying from %s any more: %s", self.key, address, why)
        self.bad.add(address)
        link = self._links.pop(address, None)
        if link is not None:
            link.close()

    def _find_holder(self, manifest: Manifest | None) -> _Holder | None:
        """A peer that holds the files and has a slot for this copy; None: read the source.

        Waits while peers are busy, or (until it has the manifest) stage the
        files themselves, as long as one of them makes progress; a copy under
        way needs a holder: peers that are still staging cannot help it. A peer
        with nothing (``none``) may be the context's reader, not started yet:
        asked again, through the endpoint, for ``NONE_WAIT`` seconds."""
        seen: dict[str, int] = {}
        nothing: dict[str, float] = {}  # peer -> when it first said it has nothing
        stall_at = time.monotonic() + STALL
        locate_at = time.monotonic() + (LOCATE_EVERY if self.peers else 0.0)  # the named peers first
        located = False
        while True:
            candidates = [p for p in self.peers if p not in self.bad]
            if self.locate is not None and (not candidates or time.monotonic() >= locate_at):
                if located and not candidates:
                    time.sleep(POLL)  # those it named last said none: ask again shortly
                fresh = [p for p in self.locate(self.key) if p != self.own and p not in self.bad]
                located, locate_at = True, time.monotonic() + LOCATE_EVERY
                candidates += [p for p in fresh if p not in candidates]
                self.peers = list(candidates)
            if not candidates:
                return None
            pending = False
            for address in candidates:
                try:
                    reply = self._link(address).ask(OPEN_TIMEOUT, op="open", key=self.key)
                except PeerFailed as e:
                    self._drop(address, str(e))
                    continue
                status = reply.get("status")
                if status == "ok":
                    holder = self._holder(address, reply, manifest)
                    if holder is not None:
                        return holder
                elif status == "busy" or (status == "wait" and manifest is None):
                    pending = True
                    if reply.get("progress") != seen.get(address):
                        seen[address] = reply.get("progress")
                        stall_at = time.monotonic() + STALL
                elif status == "failed":
                    self._drop(address, f"its own stage failed: {reply.get('error')}")
                else:
                    self.peers.remove(address)
                    if time.monotonic() - nothing.setdefault(address, time.monotonic()) > NONE_WAIT:
                        self._drop(address, f"it has had nothing for {NONE_WAIT:g}s")
            if pending and time.monotonic() > stall_at:
                for address in candidates:
                    self._drop(address, f"no progress for {STALL:g}s")
            elif pending:
                time.sleep(POLL)

    def _holder(self, address: str, reply: dict, manifest: Manifest | None) -> _Holder | None:
        try:
            got = Manifest.loads(reply["manifest"])
            if got.key != self.key or (manifest is not None and got.files != manifest.files):
                raise ValueError("another manifest than its peers'")
            return _Holder(self._link(address), str(reply["session"]), got)
        except (KeyError, ValueError, TypeError) as e:
            self._drop(address, f"bad manifest: {e}")
            return None

    # -- copying -----------------------------------------------------------------
    def _copy(self, manifest: Manifest, entry: FileEntry) -> None:
        """One file, from peers (resuming from another, or the source, when one
        fails), checked against its hash; copied again when it does not match."""
        for _ in range(MAX_BAD_COPIES):
            part = self._partial = _Partial(self.cache, entry.hash[:16])
            while part.offset < entry.size:
                if self.holder is None:
                    self.holder = self._find_holder(manifest)
                if self.holder is None:
                    self._from_source(manifest.source_path(entry), part, entry.size)
                    break
                try:
                    self._pull(entry, part)
                except PeerFailed as e:
                    log.warning("context %s: copy of %s from %s stopped at %d of %d bytes (%s); going on "
                                "from elsewhere", self.key, entry.path, self.holder.peer.address, part.offset,
                                entry.size, e)
                    self._drop(self.holder.peer.address, str(e))
                    self.holder = None
            self._partial = None
            if part.offset == entry.size and part.finish() == entry.hash:
                self.cache.add(part.path, entry.hash)
                return
            part.discard()
            self.done -= part.offset
            if part.sources == {"source"}:
                break  # the source itself no longer matches the manifest its holders copy by
            for address in part.sources - {"source"} - self.bad:
                try:  # it hashes its copy again, and removes it if it does not match
                    self._link(address).ask(OPEN_TIMEOUT, op="suspect", blob=entry.hash)
                except PeerFailed:
                    pass
                self._drop(address, f"its copy of {entry.path} does not match its hash")
            self.holder = None
            log.warning("context %s: the copy of %s did not match its hash; copying it again", self.key, entry.path)
        raise CopyError(f"cannot stage {manifest.source_path(entry)}: its copies do not match the hash in its "
                        f"manifest ({entry.hash}); the source changed since the manifest was made?")

    def _pull(self, entry: FileEntry, part: _Partial) -> None:
        """From the holder, a few chunks in flight."""
        holder = self.holder
        part.sources.add(holder.peer.address)
        window: deque[tuple[int, int]] = deque()
        offset = part.offset
        while part.offset < entry.size:
            while len(window) < WINDOW and offset < entry.size:
                length = min(CHUNK, entry.size - offset)
                window.append((holder.peer.send(op="read", session=holder.session, blob=entry.hash, offset=offset,
                                                length=length), length))
                offset += length
            n, length = window.popleft()
            reply, data = holder.peer.recv(n, READ_TIMEOUT)
            if reply.get("status") != "ok" or data is None or len(data) != length:
                raise PeerFailed(f"it answered {reply.get('status')!r} ({reply.get('error', '')})")
            part.write(data)
            self._advance("peer", length)

    def _from_source(self, path, part: _Partial, size: int | None) -> None:
        part.sources.add("source")
        try:
            with open(path, "rb") as f:
                f.seek(part.offset)
                while size is None or part.offset < size:
                    chunk = f.read(READ_CHUNK if size is None else min(READ_CHUNK, size - part.offset))
                    if not chunk:
                        break
                    part.write(chunk)
                    self._advance("source", len(chunk))
        except OSError as e:
            raise CopyError(f"cannot stage {path}: {e.strerror or e}") from e

    def _read_source(self) -> Manifest:
        """No peer has the files: read them from the source, hashing them as they
        are copied, and make the manifest the others will copy by."""
        try:
            listing = [(rel, path, path.stat().st_size) for rel, path in source_listing(self.sources)]
        except OSError as e:
            raise CopyError(f"cannot stage {getattr(e, 'filename', None) or self.sources}: {e}") from e
        self.total = sum(size for *_, size in listing)
        files = []
        for rel, path, _ in listing:
            part = self._partial = _Partial(self.cache, "source")
            self._from_source(path, part, None)
            self._partial = None
            digest = part.finish()
            if self.cache.looks_intact(digest, part.offset):
                part.discard()  # the same bytes are here already (another context's)
            else:
                self.cache.add(part.path, digest)
            files.append(FileEntry(rel, part.offset, digest))
        manifest = Manifest(self.key, self.sources, files)
        self.cache.write_manifest(manifest)
        return manifest

    def _advance(self, kind: str, n: int) -> None:
        self.done += n
        self.count(kind, n)
        if time.monotonic() - self._progress_at >= PROGRESS_EVERY:
            self._touch()

    def _touch(self) -> None:
        """The node's progress file, while bytes come in: its file servers tell
        fetchers to wait for them, and its other workers that the copy goes on."""
        self._progress_at = time.monotonic()
        self.cache.mark_progress(self.key, self.done, self.total)

