"""What the endpoint tells clients about work it can no longer serve, so that
no future waits on an endpoint that has forgotten it:

- a re-watch naming invocations its store has no record of (the store was
  replaced or emptied since they were acknowledged, or they were purged) is
  answered ``lost`` for those: the client fails them with InvocationLost;
- an endpoint that stops for good (its store deleted or replaced under it, a
  fatal error) first tells every client it knows, ``stopped``, with the cause:
  the clients fail their open futures and take no more work.
"""

from __future__ import annotations

from collections.abc import Iterable

import zmq

from faas import protocol
from faas.endpoint.clients import ClientSocket
from faas.endpoint.storeguard import StoreGuard
from faas.store import Store

LINGER_MS = 2000  # how long the socket's close waits for the last words to leave


def unknown(store: Store, guard: StoreGuard, endpoint: str, ids: list[str]) -> list[bytes] | None:
    """The ``lost`` reply to a watch naming ``ids``, or None when the store knows them all
    (StoreDown when the store cannot say: the watch waits for it, as the others do)."""
    if not ids:
        return None
    missing = sorted(set(ids) - guard.call(store.known, ids))
    if not missing:
        return None
    return protocol.encode(protocol.Error(
        message=f"endpoint {endpoint} has no record of {len(missing)} invocations this client waits for: "
                f"its store does not have them (replaced or emptied since they were acknowledged, or they "
                f"were purged after store.retention); they will not run here: submit them again",
        ids=missing, code="lost"))


def say_farewell(endpoint: str, why: str, idents: Iterable[bytes], clients: ClientSocket) -> None:
    """When the endpoint stops for good (``why``), before its client socket closes: the last
    word to every client it knows (``idents``: watching a task group, or with requests waiting
    for the store); the close then waits up to LINGER_MS for them to leave."""
    words = protocol.encode(protocol.Error(
        message=f"endpoint {endpoint} stopped for good: {why}; its open invocations will not "
                f"be reported to this client", code="stopped"))
    for ident in idents:
        clients.send_now(ident, words)
    clients.sock.setsockopt(zmq.LINGER, LINGER_MS)
