"""The endpoint's client socket: what one client may cost the others.

- Intake is bounded per pass of the server's loop, by count and by the time
  spent reading and handling, so dispatch and results go out between reads
  however fast clients send, and however costly their messages are to refuse.
  The ROUTER socket fair-queues its peers, so a flooding client gets its share
  of a pass, not the pass.
- A whole message is capped (``clients.max_message_bytes``), not only each
  frame: frames are taken one at a time and, once the sum passes the cap, the
  rest of that message is dropped as it is read rather than held.
- Replies never block the loop and a slow client is never dropped silently:
  what ZeroMQ cannot take now waits in a bounded per-client buffer; past its
  bounds (or stuck for ``stall_timeout``) the buffer is dropped and the client
  is told to reload (``Error(code="reload")``), which it does by itself.
- What a client's bad or refused requests cost the log is bounded: each kind
  of line is written at most once per ``LOG_PERIOD``, with a count of those
  held back (:class:`Throttled`), whichever pass handles the request.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import zmq

from faas import protocol
from faas.endpoint.config import EndpointConfig

log = logging.getLogger(__name__)
PER_PASS = 256  # client messages handled per pass of the loop, at most
PASS_SECONDS = 0.02  # and for at most this long, handling included
LOG_PERIOD = 10.0
_SENT, _FULL, _GONE = object(), object(), object()


@dataclass
class Message:
    ident: bytes
    frames: list[bytes]
    user: str | None  # the CURVE client key (tcp), None for ipc peers
    too_big: int = 0  # bytes of a message over the cap (its data frames were dropped)


@dataclass
class _Backlog:
    messages: deque[list[bytes]] = field(default_factory=deque)
    size: int = 0
    moved: float = field(default_factory=time.monotonic)  # when it last shrank (or began)


class Throttled:
    """A log line at most once per period; the ones held back are counted in the next."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, period: float = LOG_PERIOD):
        self.log, self.level, self.period = logger, level, period
        self._next, self._held = 0.0, 0

    def __call__(self, fmt: str, *args, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            fmt += f" ({self._held} more like it in the last {self.period:.0f}s)"
        self.log.log(self.level, fmt, *args, exc_info=exc_info)
        self._next, self._held = now + self.period, 0


class ClientSocket:
    """Reads and writes the clients' ROUTER socket for the server's loop.

    ``on_lost(ident)`` is called when messages for a client were dropped (it
    overflowed, or it is gone): the server stops pushing to it until it asks again
    (a client told to reload watches its groups again; one that reconnects does too)."""

    def __init__(self, sock: zmq.Socket, config: EndpointConfig, on_lost: Callable[[bytes], None]):
        self.sock = sock
        self.cfg = config.clients
        self.max_message = config.max_message_bytes()
        self.on_lost = on_lost
        self.bad = Throttled(log)  # a client's request refused for what it is
        self.refused = Throttled(log, logging.ERROR)  # a request refused because the store failed
        self._behind = Throttled(log)
        self._backlogs: dict[bytes, _Backlog] = {}
        self._reload: set[bytes] = set()  # told to reload, once the socket takes the message
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, self.cfg.send_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, max(2 * config.max_payload_bytes + 2**20, 1))  # per frame

    # -- intake -----------------------------------------------------------------
    def read(self) -> Iterator[Message]:
        """This pass's share of client messages, each handled by the caller before the next is read."""
        until = time.monotonic() + PASS_SECONDS
        for _ in range(PER_PASS):
            if time.monotonic() >= until:
                return
            try:
                ident = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            yield self._rest(ident)

    def _rest(self, ident: bytes) -> Message:
        """The frames after the identity (there at once: ZeroMQ delivers whole
        messages); past the cap, each further frame is released as it is read."""
        frames: list[zmq.Frame] = []
        total, user = 0, None
        while self.sock.getsockopt(zmq.RCVMORE):
            frame = self.sock.recv(copy=False)
            total += len(frame)
            if user is None:
                user = _user(frame)
            if total <= self.max_message:
                frames.append(frame)
            elif len(frames) > 1:
                del frames[1:]  # keep the header, for the ids an error can name
        if total > self.max_message:
            return Message(ident, [f.bytes for f in frames[:1]], user or None, too_big=total)
        return Message(ident, [f.bytes for f in frames], user or None)

    # -- replies ------------------------------------------------------------------
    def send(self, ident: bytes, frames: list[bytes]) -> None:
        """Queue a message for a client; never blocks."""
        if ident in self._reload and not self._tell_reload(ident):
            return  # it will ask again for all it missed
        backlog = self._backlogs.get(ident)
        if backlog is None:
            if self._try(ident, frames) is not _FULL:
                return
            backlog = self._backlogs[ident] = _Backlog()
        backlog.messages.append(frames)
        backlog.size += sum(len(f) for f in frames)
        over_bytes = backlog.size > self.cfg.buffer_bytes and len(backlog.messages) > 1  # one may be large
        if len(backlog.messages) > self.cfg.buffer_messages or over_bytes:
            self._overflow(ident, f"over {len(backlog.messages)} messages / {backlog.size} bytes buffered")

    def flush(self) -> None:
        """Send what waits, as far as the socket takes it; tell overflowed clients to reload."""
        now = time.monotonic()
        for ident, backlog in list(self._backlogs.items()):
            while backlog.messages:
                if self._try(ident, backlog.messages[0]) is not _SENT:
                    break
                sent = backlog.messages.popleft()
                backlog.size -= sum(len(f) for f in sent)
                backlog.moved = now
            if ident not in self._backlogs:
                continue  # gone
            if not backlog.messages:
                del self._backlogs[ident]
            elif now - backlog.moved > self.cfg.stall_timeout:
                self._overflow(ident, f"nothing taken for {now - backlog.moved:.0f}s")
        for ident in list(self._reload):
            self._tell_reload(ident)

    def drop(self, ident: bytes) -> None:
        """Forget what waits for a client (refused, or gone)."""
        self._backlogs.pop(ident, None)
        self._reload.discard(ident)

    def send_now(self, ident: bytes, frames: list[bytes]) -> None:
        """Best effort, ahead of anything buffered (a last word to a refused client)."""
        try:
            protocol.send(self.sock, [ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def pending(self) -> dict[str, int]:
        return {"clients_behind": len(self._backlogs), "clients_to_reload": len(self._reload),
                "buffered_bytes": sum(b.size for b in self._backlogs.values())}

    def _try(self, ident: bytes, frames: list[bytes]) -> object:
        """_SENT, _FULL (the client's queue is full) or _GONE: a client gone
        (ROUTER_MANDATORY: unknown identity) is dropped and reported."""
        try:
            protocol.send(self.sock, [ident, *frames], zmq.NOBLOCK)
            return _SENT
        except zmq.Again:
            return _FULL
        except zmq.ZMQError:  # EHOSTUNREACH: disconnected; it watches again when it reconnects
            self.drop(ident)
            self.on_lost(ident)
            return _GONE

    def _overflow(self, ident: bytes, why: str) -> None:
        self._behind("client %s fell behind (%s): its pending messages are dropped; it will be told to reload",
                     ident.hex(), why)
        self._backlogs.pop(ident, None)
        self._reload.add(ident)
        self.on_lost(ident)
        self._tell_reload(ident)

    def _tell_reload(self, ident: bytes) -> bool:
        """Whether the client was told (or is gone); else it is tried again next pass."""
        sent = self._try(ident, protocol.encode(protocol.Error(
            message="the endpoint dropped messages for this client while it was not reading; reload",
            code="reload")))
        if sent is _FULL:
            return False
        self._reload.discard(ident)  # told, or gone: nothing to tell
        return sent is _SENT


def _user(frame: zmq.Frame) -> str:
    """The CURVE client key ZAP attached to the message ("" for an ipc peer)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return ""
