"""The worker side of pull-based dispatch: a long-running Parsl task.

Parsl places one loop in each worker process it runs (and replaces lost ones);
the loop connects back to the endpoint over CurveZMQ, says which contexts its
process holds, and runs the batches the endpoint sends it, one at a time, with
one more queued behind it. Because the endpoint chooses the batch for a given
worker, work follows the warm contexts; Parsl alone would send each task to a
random free worker.

The loop ends when the endpoint retires it or falls silent for longer than the
heartbeat threshold (the endpoint died); the worker process, and its warm pool,
outlive it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import zmq

from faas import protocol
from faas.warm_pool.registry import process_pool
from faas.warm_pool.runner import run_batch


def serve(addresses: list[str], token: str, server_key: bytes, public_key: bytes, secret_key: bytes,
          heartbeat_threshold: float) -> str:
    """Pull and run batches until retired; returns why the loop ended."""
    zctx = zmq.Context()
    sock = None
    try:
        sock = _connect(zctx, addresses, token, server_key, public_key, secret_key, heartbeat_threshold)
        if sock is None:
            return f"no endpoint answered at {addresses}"
        while True:
            if not sock.poll(int(heartbeat_threshold * 1000)):
                return "endpoint silent"
            header, frames = protocol.decode(sock.recv_multipart())
            if header["type"] == "retire":
                return "retired"
            if header["type"] == "batch":
                sock.send_multipart(_run(header, frames))
    finally:
        if sock is not None:
            sock.close(0)
        zctx.term()


def _connect(zctx, addresses, token, server_key, public_key, secret_key, timeout):
    """Say ``ready`` on the first address where the endpoint answers."""
    for address in addresses:
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, token.encode())
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, public_key, secret_key
        sock.connect(address)
        sock.send_multipart(protocol.encode("ready", host=socket.gethostname(), pid=os.getpid(),
                                            contexts=process_pool().snapshot()))
        if sock.poll(int(timeout * 1000)):
            return sock
        sock.close(0)
    return None


def _run(header: dict[str, Any], frames: list[bytes]) -> list[bytes]:
    """Run one batch; the outcomes' payloads travel as frames, the rest as JSON."""
    nfun = len(header["functions"])
    functions = dict(zip(header["functions"], frames[:nfun]))
    items = [(inv_id, fid, args) for (inv_id, fid), args in zip(header["items"], frames[nfun:])]
    settings = header["settings"]
    report = run_batch(functions, items, settings.get("idle_timeout"), settings.get("memory_budget"))
    payloads = [o[2] for o in report["outcomes"]]
    report["outcomes"] = [[o[0], o[1], None, *o[3:]] for o in report["outcomes"]]
    report["at"] = time.time()
    return protocol.encode("done", payloads, batch=header["batch"], report=report)
