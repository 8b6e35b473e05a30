"""Which worker loops hold, or are staging, each context's files: so that a
loop that needs them copies them from a peer's node cache, and the source (in
practice the cluster's shared filesystem) is read once per fleet.

Fed by the loops' :class:`~faas.protocol.FilesState` (``Ready``/``Progress``
``files``); read when the dispatcher ships a batch (``Batch.peers``) and when a
loop whose peers all failed or stay busy asks again (``Locate`` -> ``Peers``).

- Peers are loops of other nodes (loops of one node share its cache, and wait
  on its lock rather than copy), holders before loops still staging, each
  group fewest copies served first, so copies spread as a tree.
- The first loop that needs a context nobody holds or stages is its *reader*:
  it gets no peers and reads the source; loops that need the context after it
  get the reader and wait for it. A reader that has not reported staging
  within ``READER_GRACE`` seconds (its batch waits behind another) gives the
  role to the next loop that asks, so no loop waits on one that never starts.
- With ``warm_pool.peer_copy`` off, every loop reads the source (the baseline).

The loops' cumulative byte counters go to the store with the dispatcher's next
transaction, so ``report`` has them per context after the loops are gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from faas import protocol
from faas.endpoint.ledger import Ledger
from faas.endpoint.roster import Roster
from faas.endpoint.workers import WorkerLoop

READER_GRACE = 5.0  # seconds a loop told to read the source has to report that it stages the files
MAX_PEERS = 8  # addresses per context in a hint


@dataclass
class _Files:
    """What the index keeps of one loop's FilesState."""

    address: str | None = None
    node: str = ""
    serving: int = 0
    staged: set[str] = field(default_factory=set)
    staging: set[str] = field(default_factory=set)
    source_bytes: dict[str, int] = field(default_factory=dict)
    peer_bytes: dict[str, int] = field(default_factory=dict)


class PeerIndex:
    def __init__(self, roster: Roster, ledger: Ledger, enabled: bool = True):
        self.roster = roster
        self.ledger = ledger
        self.enabled = enabled
        self._files: dict[str, _Files] = {}  # loop token -> its files
        self._have: dict[str, set[str]] = {}  # context key -> tokens of loops that hold or stage its files
        self._readers: dict[str, tuple[str, float]] = {}  # context key -> (the loop told to read it, when)

    def update(self, loop: WorkerLoop, files: protocol.FilesState | None) -> None:
        """A loop reported its files (None: unchanged)."""
        if files is None:
            return
        old = self._files.get(loop.token) or _Files()
        new = _Files(files.address, files.node, files.serving, set(files.staged), set(files.staging),
                     dict(files.source_bytes), dict(files.peer_bytes))
        for key in (old.staged | old.staging) - (new.staged | new.staging):
            self._drop(key, loop.token)
        for key in new.staged | new.staging:
            self._have.setdefault(key, set()).add(loop.token)
            if self._readers.get(key, ("",))[0] == loop.token:
                del self._readers[key]  # it reports staging now: a peer like the others
        self._files[loop.token] = new
        loop.files = files.model_dump()
        if len(self._files) > 2 * len(self.roster) + 16:  # loops that left without holding anything
            for token in [t for t in self._files if t not in self.roster]:
                self.forget(token)
        changed = {k: (new.source_bytes.get(k, 0), new.peer_bytes.get(k, 0))
                   for k in new.source_bytes.keys() | new.peer_bytes.keys()
                   if (new.source_bytes.get(k, 0), new.peer_bytes.get(k, 0))
                   != (old.source_bytes.get(k, 0), old.peer_bytes.get(k, 0))}
        if changed:
            self.ledger.worker(loop.name, loop.host, loop.pid)
            self.ledger.file_bytes(loop.name, changed)

    def for_batch(self, loop: WorkerLoop, key: str) -> dict[str, list[str]]:
        """``Batch.peers`` for a batch of ``key`` shipped to ``loop``: none when
        its node holds the files already."""
        mine = self._files.get(loop.token)
        if mine is not None and key in mine.staged:
            return {}
        peers = self.peers(loop, key)
        return {key: peers} if peers else {}

    def locate(self, token: str, key: str) -> list[bytes]:
        """The ``Peers`` answer to a loop's ``Locate``."""
        loop = self.roster.get(token)
        addresses = self.peers(loop, key) if loop is not None else []
        return protocol.encode(protocol.Peers(context_key=key, addresses=addresses))

    def peers(self, loop: WorkerLoop, key: str) -> list[str]:
        """File servers of other nodes' loops that hold or stage ``key``'s files,
        best first; none: ``loop`` reads the source (and is its reader, unless
        another loop was made the reader within the grace)."""
        if not self.enabled:
            return []
        mine = self._files.get(loop.token) or _Files()
        found = []
        for token in list(self._have.get(key, ())):
            if token not in self.roster:
                self.forget(token)
                continue
            other = self._files[token]
            if token != loop.token and other.address is not None and not (mine.node and other.node == mine.node):
                found.append((key not in other.staged, other.serving, other.address))
        if found:
            return [address for *_, address in sorted(found)[:MAX_PEERS]]
        reader, since = self._readers.get(key, (None, 0.0))
        now = time.monotonic()
        if reader is not None and reader != loop.token and reader in self.roster and now - since < READER_GRACE:
            other = self._files.get(reader) or _Files()
            if mine.node and other.node == mine.node:
                return []  # it waits on its node's lock for the reader
            return [other.address] if other.address is not None else []
        self._readers[key] = (loop.token, now)
        return []

    def forget(self, token: str) -> None:
        """A loop that is gone (its entries also go lazily, as they are met)."""
        gone = self._files.pop(token, None)
        for key in (gone.staged | gone.staging) if gone is not None else ():
            self._drop(key, token)

    def _drop(self, key: str, token: str) -> None:
        holders = self._have.get(key)
        if holders is not None:
            holders.discard(token)
            if not holders:
                del self._have[key]
