"""The worker loops' socket admits only the endpoint's own loops: a peer
without the client key the endpoint hands its loops gets nothing, whatever it
sends, and the endpoint carries on."""

from __future__ import annotations

import zmq
from conftest import local_config, status

from faas import Executor, ctx_function, protocol


def test_a_stranger_cannot_pose_as_a_worker(endpoint):
    endpoint("link", local_config(workers=1))
    live = status("link")["live"]
    (address,) = live["worker_addresses"]
    zctx = zmq.Context()
    try:
        # no CURVE at all; the endpoint's (public) server key but a client key of its own
        for curve in (False, True):
            sock = zctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, b"stranger")  # so that any reply could reach it
            sock.setsockopt(zmq.SNDTIMEO, 2000)  # a refused handshake may leave no pipe to queue on
            if curve:
                sock.curve_serverkey = live["worker_server_key"].encode()
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.connect(address)
            try:
                sock.send_multipart(protocol.encode(protocol.Ready(host="evil", pid=1, contexts={})))
            except zmq.Again:  # refused before it could even queue: nothing could answer it
                pass
            assert not sock.poll(2000), "the endpoint answered a peer without its worker key"
            sock.close(0)
    finally:
        zctx.destroy(linger=0)
    fn = ctx_function(model=dict)(lambda ctx, x: x + 1)
    with Executor(endpoint="link") as ex:
        assert ex.submit(fn, 1).result(timeout=60) == 2
    assert "evil:1" not in status("link")["live"]["worker_contexts"]
