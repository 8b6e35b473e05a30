"""What the endpoint does with each client request, and what it sends back.

The server's loop hands every message read from the client socket to
:meth:`Requests.handle`: it is decoded (a typed message of
:mod:`faas.protocol`), handled by the method named after its type
(``_on_<type>``: adding a request type is adding that method, marked
:func:`waits_for_store` if it reads or writes the store), deferred while
the store fails (:class:`~faas.endpoint.storeguard.DeferredRequests`), and
answered. A submission is recorded in the store before it is acknowledged and
dispatched; results are pushed, once recorded, to the clients that watch
their task group.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from faas import protocol
from faas.endpoint import lost, storeguard
from faas.endpoint.clients import ClientSocket, Message
from faas.endpoint.config import EndpointConfig
from faas.endpoint.dispatcher import Dispatcher
from faas.endpoint.items import Item
from faas.endpoint.ledger import Final, results_message
from faas.endpoint.storeguard import DeferredRequests, Rejected, StoreDown, StoreGuard
from faas.errors import ProtocolError
from faas.store import Store

log = logging.getLogger(__name__)


def waits_for_store(handler: Callable) -> Callable:
    """Marks a request that queues behind those waiting for the store, in
    arrival order (a cancel never overtakes its submit)."""
    handler.waits_for_store = True
    return handler


class Requests:
    """``send(ident, frames)``: to one client (the server checks its key first);
    ``status()``: the endpoint's live status, for a status request; ``fleet(request)``:
    the dashboard's view (:class:`~faas.endpoint.fleetview.FleetView`)."""

    def __init__(self, name: str, config: EndpointConfig, store: Store, guard: StoreGuard, dispatcher: Dispatcher,
                 clients: ClientSocket, send: Callable[[bytes, list[bytes]], None],
                 status: Callable[[], dict[str, Any]], fleet: Callable[[protocol.FleetRequest], dict[str, Any]]):
        self.name = name  # the endpoint's, for the errors that name it
        self.cfg = config
        self.store = store
        self.guard = guard
        self.dispatcher = dispatcher
        self.clients = clients
        self.send = send
        self.status = status
        self.fleet = fleet
        self.watchers: dict[str, set[bytes]] = {}  # task group -> client identities
        self.deferred = DeferredRequests(guard, int(config.store.max_waiting_bytes))

    # -- intake -------------------------------------------------------------------
    def handle(self, ident: bytes, frames: list[bytes]) -> None:
        msg = None
        try:
            msg, body = protocol.decode(frames, protocol.CLIENT_REQUESTS)
            handler = getattr(self, f"_on_{msg.type}")
            if self.deferred and getattr(handler, "waits_for_store", False):
                self._defer(ident, msg, body)  # behind earlier ones waiting for the store
                return
            handler(ident, msg, body)
        except StoreDown:
            self._defer(ident, msg, body)
        except ProtocolError as e:
            self.clients.bad("bad message from a client: %s", e)
            self.send(ident, protocol.encode(protocol.Error(message=str(e), ids=_invocation_ids(frames))))
        except Exception as e:
            self._failed(ident, msg, e)

    def _defer(self, ident: bytes, msg, body: list[bytes]) -> None:
        if not self.deferred.add(ident, msg, body):
            d = self.deferred
            self._refuse(ident, msg, f"the store is failing ({self.guard.cause}) and {len(d)} requests "
                                     f"({d.bytes} bytes) already wait for it, the most the endpoint keeps "
                                     f"(store.max_waiting_bytes {d.max_bytes})")

    def retry_deferred(self) -> None:
        """Requests that wait for the store, tried again in order."""
        self.deferred.retry(self._retry, self._refuse)

    def too_big(self, msg: Message) -> None:
        cap = self.clients.max_message
        self.clients.bad("refused a %d-byte message from a client: over max_message_bytes (%d)", msg.too_big, cap)
        self.send(msg.ident, protocol.encode(protocol.Error(
            message=f"message of {msg.too_big} bytes exceeds the endpoint's max_message_bytes ({cap})",
            ids=_invocation_ids(msg.frames), code="too_large")))

    def _retry(self, ident: bytes, msg, body: list[bytes]) -> None:
        """A request that waited for the store, tried again (StoreDown: it waits on)."""
        try:
            getattr(self, f"_on_{msg.type}")(ident, msg, body)
        except StoreDown:
            raise
        except Exception as e:
            self._failed(ident, msg, e)

    def _failed(self, ident: bytes, msg, e: Exception) -> None:
        """A request that failed alone (not for the store being down): the client
        hears why, naming a submit's invocations. Logged with its traceback
        unless the request itself was at fault."""
        request = f"a {msg.type} request" if msg is not None else "a request"
        self.clients.bad("%s failed: %s: %s", request, type(e).__name__, e,
                         exc_info=not isinstance(e, (ProtocolError, Rejected)))
        prefix = "" if isinstance(e, (ProtocolError, Rejected)) else f"endpoint error: {type(e).__name__}: "
        self.send(ident, protocol.encode(protocol.Error(message=f"{prefix}{e}", ids=_submitted_ids(msg))))

    def _refuse(self, ident: bytes, msg, why: str) -> None:
        """A request the store could not take within its retry window: nothing of it
        was recorded, and a refused submission never runs."""
        ids = _submitted_ids(msg)
        if ids:
            why += f"; these {len(ids)} invocations were not recorded and will not run: submit them again"
        self.clients.refused("refused a %s request: %s", msg.type, why)
        self.send(ident, protocol.encode(protocol.Error(message=why, ids=ids, code=storeguard.CODE)))

    # -- the requests ---------------------------------------------------------------
    def _on_ping(self, ident: bytes, msg: protocol.Ping, body: list[bytes]) -> None:
        self.send(ident, protocol.encode(protocol.Pong(max_payload_bytes=self.cfg.max_payload_bytes,
                                                       max_message_bytes=self.clients.max_message)))

    def _on_status(self, ident: bytes, msg: protocol.StatusRequest, body: list[bytes]) -> None:
        self.send(ident, protocol.encode(protocol.StatusReply(status=self.status())))

    def _on_fleet(self, ident: bytes, msg: protocol.FleetRequest, body: list[bytes]) -> None:
        self.send(ident, protocol.encode(protocol.FleetReply(view=self.fleet(msg))))

    @waits_for_store
    def _on_submit(self, ident: bytes, msg: protocol.Submit, body: list[bytes]) -> None:
        """Checked whole before anything is written (protocol.Submit refuses an id
        named twice); ids already recorded are a resend, acknowledged with what
        is known of them."""
        limit = self.cfg.max_payload_bytes
        too_big = [len(b) for b in body if len(b) > limit]
        if too_big:
            raise ProtocolError(f"payload of {max(too_big)} bytes exceeds the endpoint's "
                                f"max_payload_bytes ({limit})")
        ctx_of = {f.id: f.context_key for f in msg.functions}
        for fid in {inv.function for inv in msg.invocations} - set(ctx_of):  # sent in an earlier message
            known = self.dispatcher.functions.get(fid)
            if known is None:
                raise ProtocolError(f"unknown function id {fid}")
            ctx_of[fid] = known.context_key
        for f, blob in zip(msg.functions, body):
            self.guard.call(self.store.add_function, f.id, f.name, f.context_key, f.context, f.retries, blob,
                            f.batch_size)
            self.dispatcher.register_function(f.id, blob, f)
        rows = [dict(id=inv.id, group_id=msg.group, function_id=inv.function, context_key=ctx_of[inv.function],
                     args=args) for inv, args in zip(msg.invocations, body[len(msg.functions):])]
        new = self.guard.call(self.store.add_invocations, rows)
        self.watchers.setdefault(msg.group, set()).add(ident)
        self.dispatcher.submit(Item(r["id"], msg.group, r["function_id"], r["context_key"], r["args"])
                               for r in rows if r["id"] in new)
        self.send(ident, protocol.encode(protocol.Ack(ids=[r["id"] for r in rows])))
        resent = [r["id"] for r in rows if r["id"] not in new]
        if resent:  # a resend after a reconnect: results already recorded go out again
            self._push_to(ident, self.guard.call(self.store.final_results, ids=resent))

    @waits_for_store
    def _on_watch(self, ident: bytes, msg: protocol.Watch, body: list[bytes]) -> None:
        self.watchers.setdefault(msg.group, set()).add(ident)
        ids, finals = self.guard.call(self.store.group_ids, msg.group), self.guard.call(
            self.store.final_results, group_id=msg.group)
        gone = lost.unknown(self.store, self.guard, self.name, msg.ids)  # before any reply: StoreDown retries
        self.send(ident, protocol.encode(protocol.Tasks(group=msg.group, ids=ids)))
        self._push_to(ident, finals)
        if gone is not None:
            self.send(ident, gone)

    @waits_for_store
    def _on_cancel(self, ident: bytes, msg: protocol.Cancel, body: list[bytes]) -> None:
        self.dispatcher.cancel(msg.ids)

    # -- what goes to the watchers --------------------------------------------------
    def known_clients(self) -> set[bytes]:
        """Clients watching a task group or waiting for the store."""
        return {ident for group in self.watchers.values() for ident in group} | self.deferred.idents()

    def unwatch(self, ident: bytes) -> None:
        for group in self.watchers.values():
            group.discard(ident)

    def push(self, finals: list[Final]) -> None:
        """Outcomes now on record, to the clients that watch their groups."""
        by_group: dict[str, list[Final]] = {}
        for f in finals:
            by_group.setdefault(f.group_id, []).append(f)
        for group, items in by_group.items():
            self.send_group(group, results_message(items))

    def started(self, items: list[Item]) -> None:
        """Invocations that started on a worker: their futures go RUNNING."""
        by_group: dict[str, list[str]] = {}
        for it in items:
            by_group.setdefault(it.group_id, []).append(it.id)
        for group, ids in by_group.items():
            self.send_group(group, protocol.encode(protocol.Running(ids=ids)))

    def refuse_unrecorded(self, finals: list[Final]) -> None:
        """Tell clients which outcomes the store has not taken within its retry
        window. They are kept, and recorded (and pushed) once the store is back."""
        by_group: dict[str, list[str]] = {}
        for f in finals:
            by_group.setdefault(f.group_id, []).append(f.id)
        for group, ids in by_group.items():
            why = self.guard.refusal(f"the outcome of {len(ids)} invocations")
            log.error("%s; their clients are told", why)
            self.send_group(group, protocol.encode(protocol.Error(
                message=f"{why}; the endpoint keeps it and records it once the store is back "
                        f"(Executor.reload_tasks then finds it)", ids=ids, code=storeguard.CODE)))

    def send_group(self, group: str, msg: list[bytes]) -> None:
        for ident in list(self.watchers.get(group, ())):
            self.send(ident, msg)

    def _push_to(self, ident: bytes, rows: list[dict]) -> None:
        if rows:
            self.send(ident, results_message([Final.of_row(r) for r in rows]))


def _invocation_ids(frames: list[bytes]) -> list[str]:
    """The ids a refused submit carried, so the client can fail just those."""
    try:
        header = json.loads(frames[0]) if frames else None
    except (ValueError, RecursionError):
        return []
    invocations = header.get("invocations") if isinstance(header, dict) else None
    if not isinstance(invocations, list):
        return []
    return [inv["id"] for inv in invocations
            if isinstance(inv, dict) and isinstance(inv.get("id"), str) and 0 < len(inv["id"]) <= protocol.MAX_ID_LEN]


def _submitted_ids(msg) -> list[str]:
    return [inv.id for inv in msg.invocations] if isinstance(msg, protocol.Submit) else []

