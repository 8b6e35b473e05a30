"""Garbage, malformed messages and oversized payloads against a live endpoint:
each is answered with an error (or dropped), and the daemon stays up."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import zmq
from conftest import RunningEndpoint, local_config, status, write_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from faas import Executor, ctx_function, protocol
from faas.client import serialize
from faas.errors import EndpointError, PayloadTooLarge, ProtocolError

NAME = "fuzz"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(RunningEndpoint, its tcp:// address), with a small max_payload_bytes."""
    home = tmp_path_factory.mktemp("fuzz") / "faas-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAAS_HOME", str(home))
        write_config(home, NAME, local_config(workers=1, extra=f"listen: [tcp://127.0.0.1:0]\n"
                                                                f"max_payload_bytes: {LIMIT}\n"))
        ep = RunningEndpoint(home, NAME)
        ep.start()
        try:
            (address,) = [a for a in status(NAME)["addresses"] if a.startswith("tcp://")]
            yield ep, address
        finally:
            ep.stop()


@pytest.fixture
def dealer(live):
    ep, _ = live
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"ipc://{ep.path / 'endpoint.sock'}")
    yield sock
    sock.close(0)
    zctx.term()


def _replies_until_barrier(sock: zmq.Socket) -> list:
    """Send a watch of a fresh group after the message under test; the
    endpoint answers in order, so every reply before the barrier's belongs to
    that message."""
    barrier = uuid.uuid4().hex
    sock.send_multipart(protocol.encode(protocol.Watch(group=barrier)))
    replies = []
    while True:
        assert sock.poll(10_000), "the endpoint stopped answering"
        reply, _ = protocol.decode(sock.recv_multipart(), protocol.CLIENT_REPLIES)  # always well-formed
        if reply.type == "tasks" and reply.group == barrier:
            return replies
        if reply.type not in ("results", "running"):  # pushed whenever an earlier submit's work moves on
            replies.append(reply)


_FIELDS = ["group", "functions", "invocations", "ids", "items", "message", "status", "id", "function", "retries"]
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_FIELDS), inner,
                                                                                  max_size=4),
                     max_leaves=12)
_TYPES = ["ping", "status", "submit", "watch", "cancel", "pong", "ack", "running", "results", "tasks",
          "status_reply", "error", "ready", "progress", "hb", "batch", "revoke", "retire", "launch", "", None, 1,
          [], {}]
_versions = st.sampled_from([protocol.VERSION] * 3 + [1, "2", None])
_header = st.fixed_dictionaries({"type": st.sampled_from(_TYPES), "v": _versions}, optional={f: _json for f in _FIELDS})
_submit = st.builds(
    lambda fid, inv, retries, group: {
        "type": "submit", "v": protocol.VERSION, "group": group,
        "functions": [{"id": fid, "name": "f", "context_key": "k", "context": "c", "retries": retries}],
        "invocations": [{"id": inv, "function": fid}]},
    st.text(min_size=1, max_size=70), st.text(min_size=1, max_size=70),
    st.integers(-5, 10**20), st.text(max_size=70))
_message = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=4),  # raw garbage
    st.tuples(_header | _submit, st.lists(st.binary(max_size=32), max_size=3)).map(
        lambda hb: [json.dumps(hb[0]).encode(), *hb[1]]),
)


def test_fuzzed_messages_get_errors_and_the_endpoint_stays_up(live, dealer):
    ep, _ = live
    pid = ep.pid

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_message)
    @example([b'{"type": [], "v": 2}'])  # once a TypeError in the parser
    @example([b'{"type": "pong", "v": 2, "invocations": 5}'])  # once a crash while refusing it
    @example([b'{"type": "cancel", "v": 2, "ids": ["nobody"]}'])  # cancelling what is unknown is a no-op
    @example([b"[" * 100_000])  # a RecursionError in json
    def check(frames):
        dealer.send_multipart(frames)
        replies = _replies_until_barrier(dealer)
        try:
            protocol.decode(frames, protocol.CLIENT_REQUESTS)
        except ProtocolError:
            assert [r.type for r in replies] == ["error"], replies

    check()
    dealer.send_multipart(protocol.encode(protocol.Ping()))
    assert dealer.poll(5000) and protocol.decode(dealer.recv_multipart())[0].type == "pong"
    assert ep.running() and ep.pid == pid


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.binary(min_size=1, max_size=512))
def _send_raw_bytes(address: str, data: bytes) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)


def test_garbage_on_the_tcp_port_is_dropped(live, dealer):
    """Bytes that are not ZMTP never reach the message handler (nor anything that unpickles)."""
    ep, address = live
    _send_raw_bytes(address)
    dealer.send_multipart(protocol.encode(protocol.Ping()))
    assert dealer.poll(5000) and protocol.decode(dealer.recv_multipart())[0].type == "pong"


@ctx_function(model=dict)
def size(ctx, blob):
    return len(blob)


def test_an_invocation_of_a_function_never_sent_is_refused_by_name(live, dealer):
    fid, body = serialize.function_blob(size)
    info = protocol.FunctionInfo(id=fid, name="size", context_key=size.context_key, context=size.context_description)
    unknown = uuid.uuid4().hex

    def submit(functions: list, function: str) -> tuple[list[str], list]:
        ids = [uuid.uuid4().hex]
        frames = [body] if functions else []
        dealer.send_multipart(protocol.encode(
            protocol.Submit(group=uuid.uuid4().hex, functions=functions,
                            invocations=[protocol.InvocationRef(id=ids[0], function=function)]),
            [*frames, serialize.args_blob((b"x",), {}, None)]))
        return ids, _replies_until_barrier(dealer)

    ids, replies = submit([info], fid)
    assert [(r.type, r.ids) for r in replies] == [("ack", ids)]
    ids, replies = submit([], fid)  # sent before: known by its id alone
    assert [(r.type, r.ids) for r in replies] == [("ack", ids)]
    _, replies = submit([], unknown)
    assert [r.type for r in replies] == ["error"] and unknown in replies[0].message, replies


def test_payload_limit_is_clear_at_submit_and_at_the_endpoint(live, dealer):
    ep, _ = live
    with Executor(endpoint=NAME) as ex:  # its own limit is larger: it learns the endpoint's
        assert ex.submit(size, b"x" * 1000).result(timeout=60) == 1000
        with pytest.raises(PayloadTooLarge, match=f"over the limit of {LIMIT} bytes"):
            ex.submit(size, b"x" * (LIMIT + 1))
    # A client that does not check: the endpoint refuses just those invocations.
    fid, inv = uuid.uuid4().hex, uuid.uuid4().hex
    dealer.send_multipart(protocol.encode(protocol.Submit(
        group="g", functions=[protocol.FunctionInfo(id=fid, name="f", context_key="k", context="c")],
        invocations=[protocol.InvocationRef(id=inv, function=fid)]), [b"f", b"x" * (LIMIT + 1)]))
    (reply,) = _replies_until_barrier(dealer)
    assert reply.type == "error" and reply.ids == [inv] and "max_payload_bytes" in reply.message
    with pytest.raises(EndpointError, match="invalid endpoint name"):
        Executor(endpoint="../" + NAME)
