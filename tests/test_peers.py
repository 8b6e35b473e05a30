"""The endpoint's index of context files (faas.endpoint.peers): who is told to
read the source, which peers a loop is told of and in what order, and the
loops' byte counters reaching the store and the report. No workers or sockets:
the index is fed the FilesState messages loops send."""

from __future__ import annotations

import pytest

from faas import protocol
from faas.endpoint import peers as peers_module
from faas.endpoint.ledger import Ledger
from faas.endpoint.peers import PeerIndex
from faas.endpoint.roster import Roster
from faas.endpoint.storeguard import StoreGuard
from faas.endpoint.workers import WorkerLoop
from faas.store import Store, sqlite_url
from faas.store.report import build_report, render_text


@pytest.fixture
def fleet(tmp_path):
    """A store, a roster of four ready loops, each its own node, and the index."""
    store = Store(sqlite_url(tmp_path))
    roster, ledger = Roster(), Ledger(store, StoreGuard(60.0))
    index = PeerIndex(roster, ledger)
    loops = []
    for i in range(4):
        lp = WorkerLoop(f"t{i}", host="h", pid=100 + i)
        roster.add(lp)
        roster.mark_ready(lp)
        index.update(lp, files(i))
        loops.append(lp)
    yield store, index, ledger, loops
    store.close()


def files(i: int, node: str | None = None, **state) -> protocol.FilesState:
    return protocol.FilesState(address=f"tcp://10.0.0.{i}:9000", node=node or f"node{i}", **state)


def test_the_first_loop_reads_the_source_and_the_others_are_told_of_it(fleet):
    _, index, _, (a, b, c, d) = fleet
    assert index.for_batch(a, "k") == {}  # nobody has it: a reads the source
    assert index.for_batch(b, "k") == {"k": ["tcp://10.0.0.0:9000"]}  # the reader, before it reports
    index.update(a, files(0, staging=["k"], source_bytes={"k": 10}))
    index.update(b, files(1, staging=["k"]))
    assert index.peers(c, "k") == ["tcp://10.0.0.0:9000", "tcp://10.0.0.1:9000"]
    # holders before loops still staging; among holders, fewest copies served first
    index.update(a, files(0, staged=["k"], serving=2))
    index.update(b, files(1, staged=["k"], serving=1))
    index.update(c, files(2, staging=["k"]))
    assert index.peers(d, "k") == ["tcp://10.0.0.1:9000", "tcp://10.0.0.0:9000", "tcp://10.0.0.2:9000"]
    assert index.for_batch(a, "k") == {}  # it holds them: no peers needed
    assert index.locate("t3", "other") == protocol.encode(protocol.Peers(context_key="other", addresses=[]))


def test_loops_of_the_same_node_are_not_peers(fleet):
    """They share the node's cache: a loop waits on its node's lock, it does not copy over the network."""
    _, index, _, (a, b, c, _) = fleet
    index.update(a, files(0, node="shared", staged=["k"]))
    index.update(b, files(1, node="shared"))
    assert index.peers(b, "k") == []
    index.update(c, files(2, staging=["k"]))
    assert index.peers(b, "k") == ["tcp://10.0.0.2:9000"]


def test_a_reader_that_never_starts_hands_the_role_on(fleet, monkeypatch):
    _, index, _, (a, b, c, _) = fleet
    monkeypatch.setattr(peers_module, "READER_GRACE", 0.0)
    assert index.peers(a, "k") == []
    assert index.peers(b, "k") == []  # a did not report staging in time: b reads the source
    assert index.peers(c, "k") == []  # nor did b
    monkeypatch.setattr(peers_module, "READER_GRACE", 60.0)
    assert index.peers(a, "k") == ["tcp://10.0.0.2:9000"]  # c is the reader now


def test_gone_loops_are_never_peers(fleet):
    _, index, _, (a, b, c, _) = fleet
    index.update(a, files(0, staged=["k"]))
    index.roster.remove("t0")
    assert index.peers(b, "k") == []  # and b is the reader now
    assert index.peers(c, "k") == ["tcp://10.0.0.1:9000"]


def test_without_peer_copy_everyone_reads_the_source(fleet):
    _, index, _, (a, b, _, _) = fleet
    index.enabled = False
    index.update(a, files(0, staged=["k"]))
    assert index.for_batch(b, "k") == {}


def test_byte_counters_reach_the_store_and_the_report(fleet):
    store, index, ledger, (a, b, _, _) = fleet
    store.add_function("f", "fn", "k", "loader(files=/data/x)", 0, b"body")
    index.update(a, files(0, staged=["k"], source_bytes={"k": 200_000_000}))
    index.update(b, files(1, staging=["k"], peer_bytes={"k": 50_000_000}))
    ledger.commit(force=True)
    index.update(b, files(1, staged=["k"], peer_bytes={"k": 200_000_000}))  # cumulative: replaces the last
    ledger.commit(force=True)
    report = build_report(store)
    ctx = report.contexts["loader(files=/data/x)"]
    assert (ctx.source_bytes, ctx.peer_bytes) == (200_000_000, 200_000_000)
    assert report.workers["h:101"].peer_bytes == 200_000_000
    assert "200.0" in render_text(report)
