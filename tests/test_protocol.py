"""The wire format rejects anything malformed with a ProtocolError."""

from __future__ import annotations

import json

import pytest

from faas import protocol
from faas.errors import ProtocolError


def _submit(**over):
    header = dict(type="submit", v=protocol.VERSION, group="g",
                  functions=[dict(id="f", name="n", context_key="k", context="c", retries=0)],
                  invocations=[dict(id="i", function="f")])
    header.update(over)
    return [json.dumps(header).encode(), b"fn", b"args"]


def test_round_trip():
    header, frames = protocol.decode(protocol.encode("ack", [b"x"], ids=["a"]))
    assert header["type"] == "ack" and header["ids"] == ["a"] and frames == [b"x"]
    assert protocol.decode(_submit())[1] == [b"fn", b"args"]


@pytest.mark.parametrize("frames, message", [
    ([], "empty"),
    ([b"\xff\xfe"], "not JSON"),
    ([b"[1, 2]"], "not a JSON object"),
    ([b'{"type": "launch", "v": 1}'], "unknown message type"),
    ([b'{"type": "ping", "v": 99}'], "protocol version"),
    ([b'{"type": "watch", "v": 1}'], "'group'"),
    (_submit(group="x" * 65), "1..64"),
    (_submit(invocations=[{"id": 3, "function": "f"}]), "'id'"),
    (_submit(functions=[dict(id="f", name="n", context_key="k", context="c", retries=True)]), "'retries'"),
    (_submit()[:2], "data frames"),
    (_submit(functions=[dict(id="f", name="n", context_key="k", context="c", retries=10**6)]), "retries"),
    ([b'{"type": ["ping"], "v": 1}'], "unknown message type"),
    ([b"[" * 100_000], "not JSON"),
])
def test_malformed_messages_are_rejected(frames, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(frames)
