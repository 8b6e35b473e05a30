"""The wire format: typed messages for every hop, and anything malformed
rejected with a ProtocolError that names the field."""

from __future__ import annotations

import json

import pytest
import zmq

from faas import protocol
from faas.errors import ProtocolError


def _submit(**over):
    header = dict(type="submit", v=protocol.VERSION, group="g",
                  functions=[dict(id="f", name="n", context_key="k", context="c", retries=0)],
                  invocations=[dict(id="i", function="f")])
    header.update(over)
    return [json.dumps(header).encode(), b"fn", b"args"]


def test_round_trip_of_every_hop():
    msg, frames = protocol.decode(protocol.encode(protocol.Ack(ids=["a"])), protocol.CLIENT_REPLIES)
    assert isinstance(msg, protocol.Ack) and msg.ids == ["a"] and frames == []
    msg, frames = protocol.decode(_submit(), protocol.CLIENT_REQUESTS)
    assert isinstance(msg, protocol.Submit) and msg.functions[0].batch_size == 1 and frames == [b"fn", b"args"]
    progress = protocol.Progress(started=["a"], outcomes=[
        protocol.OutcomeInfo(id="a", kind=protocol.Kind.TIMEOUT, error="tb", started=1.0, finished=2.5)])
    msg, frames = protocol.decode(protocol.encode(progress, [b"payload"]), protocol.WORKER_REPORTS)
    assert msg.outcomes[0].kind is protocol.Kind.TIMEOUT and frames == [b"payload"]
    batch = protocol.Batch(batch=3, functions=["f"], items=[("a", "f")], settings=protocol.WorkerSettings(timeout=2))
    msg, frames = protocol.decode(protocol.encode(batch, [b"body", b"args"]), protocol.WORKER_ORDERS)
    assert msg.items == [("a", "f")] and msg.settings.timeout == 2.0 and msg.peers == {}
    files = protocol.FilesState(address="tcp://10.0.0.1:7000", node="n1", staged=["k"], peer_bytes={"k": 5})
    msg, _ = protocol.decode(protocol.encode(protocol.Progress(files=files)), protocol.WORKER_REPORTS)
    assert msg.files == files
    msg, _ = protocol.decode(protocol.encode(protocol.Locate(context_key="k")), protocol.WORKER_REPORTS)
    assert msg.context_key == "k"
    msg, _ = protocol.decode(protocol.encode(protocol.Peers(context_key="k", addresses=["tcp://h:1"])),
                             protocol.WORKER_ORDERS)
    assert msg.addresses == ["tcp://h:1"]
    msg, _ = protocol.decode(protocol.encode(protocol.FleetRequest(after=7)), protocol.CLIENT_REQUESTS)
    assert isinstance(msg, protocol.FleetRequest) and msg.after == 7 and msg.invocation is None
    msg, _ = protocol.decode(protocol.encode(protocol.FleetReply(view={"cursor": 7})), protocol.CLIENT_REPLIES)
    assert msg.view == {"cursor": 7}
    msg, _ = protocol.decode(protocol.encode(protocol.Heartbeat(resources={"rss": 1})), protocol.WORKER_REPORTS)
    assert msg.resources == {"rss": 1}


def test_send_and_recv_carry_every_frame_as_send_multipart_does():
    """protocol.send/recv (plain-int flags, cheaper per frame) against pyzmq's own multipart calls,
    both ways: empty frames, one frame, many; NOBLOCK on nothing to read raises zmq.Again."""
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://frames")
        b.connect("inproc://frames")
        for frames in ([b"header"], [b"header", b"", b"x" * 100_000, b""], [b"h", *(bytes([i]) for i in range(40))]):
            protocol.send(a, frames)
            assert b.recv_multipart() == frames
            b.send_multipart(frames)
            assert protocol.recv(a) == frames
        with pytest.raises(zmq.Again):
            protocol.recv(b, zmq.NOBLOCK)
        protocol.send(a, [b"1", b"2"], zmq.NOBLOCK)
        protocol.send(a, [b"3"], zmq.NOBLOCK)
        assert b.poll(1000)
        assert [protocol.recv(b, zmq.NOBLOCK), protocol.recv(b, zmq.NOBLOCK)] == [[b"1", b"2"], [b"3"]]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


@pytest.mark.parametrize("frames, message", [
    ([], "empty"),
    ([b"\xff\xfe"], "not JSON"),
    ([b"[1, 2]"], "not a JSON object"),
    ([b'{"type": "launch", "v": 2}'], "unknown message type"),
    ([b'{"type": "ping", "v": 99}'], "protocol version"),
    ([b'{"type": "watch", "v": 2}'], "'group'"),
    (_submit(group="x" * 65), "at most 64"),
    (_submit(invocations=[{"id": 3, "function": "f"}]), "'invocations.0.id'"),
    (_submit(functions=[dict(id="f", name="n", context_key="k", context="c", retries=True)]), "retries"),
    (_submit()[:2], "data frames"),
    (_submit(functions=[dict(id="f", name="n", context_key="k", context="c", retries=10**6)]), "retries"),
    ([b'{"type": ["ping"], "v": 2}'], "unknown message type"),
    ([b"[" * 100_000], "not JSON"),
    ([b'{"type": "cancel", "v": 2, "ids": "abc"}'], "'ids'"),
    ([b'{"type": "ready", "v": 2, "host": "h", "pid": 1, "contexts": {}}'], "not expected here"),
    ([b'{"type": "fleet", "v": 2, "after": -1}'], "'after'"),
    ([b'{"type": "fleet", "v": 2, "invocation": ""}'], "'invocation'"),
])
def test_malformed_client_requests_are_rejected(frames, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(frames, protocol.CLIENT_REQUESTS)


@pytest.mark.parametrize("header", [
    {"type": "progress", "v": 2, "outcomes": [{"id": "a", "kind": "exploded"}]},
    {"type": "progress", "v": 2, "outcomes": [{"kind": "ok"}]},
    {"type": "progress", "v": 2, "started": [7]},
    {"type": "ready", "v": 2, "host": "h", "pid": "1", "contexts": {}},
    {"type": "batch", "v": 2, "batch": 1, "functions": [], "items": [], "settings": {}},
    {"type": "progress", "v": 2, "files": {"serving": -1}},
    {"type": "progress", "v": 2, "files": {"peer_bytes": {"k": "many"}}},
    {"type": "locate", "v": 2},
    {"type": "peers", "v": 2, "context_key": "k", "addresses": []},
])
def test_malformed_worker_reports_are_rejected(header):
    with pytest.raises(ProtocolError):
        protocol.decode([json.dumps(header).encode()], protocol.WORKER_REPORTS)


def test_outcome_frames_must_match_the_outcomes():
    msg = protocol.Progress(outcomes=[protocol.OutcomeInfo(id="a", kind=protocol.Kind.OK)])
    with pytest.raises(ProtocolError, match="data frames"):
        protocol.decode(protocol.encode(msg), protocol.WORKER_REPORTS)


def test_retry_rule():
    Kind = protocol.Kind
    assert protocol.retryable(Kind.ERROR, attempts=1, retries=1)
    assert not protocol.retryable(Kind.ERROR, attempts=2, retries=1)
    assert protocol.retryable(Kind.TIMEOUT, attempts=1, retries=2)
    assert not any(protocol.retryable(k, 1, 5) for k in (Kind.OK, Kind.CANCELLED, Kind.INIT_ERROR, Kind.RETURNED))
