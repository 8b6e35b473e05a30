"""The client's link to an endpoint: one background thread owns the ZeroMQ
socket, sends queued submissions in chunks and resolves futures as results are
pushed to it. Whatever raises in that thread (encoding, sending, receiving,
decoding, a callback) ends it through ``on_fatal``, never silently."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from faas import protocol
from faas.client.threads import guarded
from faas.errors import ClientError

log = logging.getLogger(__name__)
RECONNECT_IVL_MS, RECONNECT_IVL_MAX_MS = 100, 5000  # ZeroMQ's reconnect back-off
_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED)


class Connection:
    """Sends messages given by any thread; calls ``on_message(message, frames)``
    on its own thread for every message from the endpoint (one of
    :data:`faas.protocol.CLIENT_REPLIES`).

    ZeroMQ reconnects by itself, with back-off, when the link drops or the
    endpoint restarts, but messages queued on the dead link may be lost and
    the endpoint has forgotten this client: after every (re)connection (a
    completed handshake) ``on_connect()`` returns the messages to (re)send,
    which the endpoint treats idempotently. ``on_refused(detail)`` is called
    when the endpoint rejects this client's CURVE key. ``on_fatal(error)`` is
    called, once, when the thread ends because something raised in it (a
    message from the endpoint it cannot decode too: dropping it could strand
    a future); ``failure`` is then that ClientError.
    """

    def __init__(self, address: str, on_message: Callable[[Any, list[bytes]], None],
                 on_idle: Callable[[], list[list[bytes]]] = lambda: [],
                 on_connect: Callable[[], list[list[bytes]]] = lambda: [],
                 on_refused: Callable[[str], None] = lambda detail: None,
                 socket_options: dict[int, Any] | None = None,
                 on_fatal: Callable[[ClientError], None] = lambda error: None):
        self.address = address
        self._on_message = on_message
        self._on_idle = on_idle
        self._on_connect = on_connect
        self._on_refused = on_refused
        self._socket_options = socket_options or {}
        self.connects = 0  # completed handshakes: each reconnection counts (tests and diagnostics read it)
        self._up = False
        self.last_failure = ""  # the latest failed handshake, to explain a timeout
        self.failure: ClientError | None = None
        self._on_fatal = on_fatal
        self._outbox: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = threading.Event()
        self._zctx = zmq.Context()
        self._thread = threading.Thread(target=guarded("the client's I/O thread", self._run, self._fatal),
                                        name="faas-client-io", daemon=True)
        self._thread.start()

    def send(self, frames: list[bytes]) -> None:
        self._outbox.put(frames)
        self.wake()

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._closed.set()
        self.wake()
        self._thread.join(timeout=10)
        self._zctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_event(self, event: dict) -> list[list[bytes]]:
        kind = event["event"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connects += 1
            self._up, self.last_failure = True, ""
            return self._on_connect()
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._on_refused(f"handshake refused with status {event['value']}")
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self.last_failure = f"the endpoint does not speak this security mechanism (code {event['value']:#x})"
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self.last_failure = "the handshake failed (a wrong server_key?)"
        elif kind == zmq.EVENT_DISCONNECTED and self._up:
            self._up = False
            log.warning("lost the connection to %s; reconnecting", self.address)
        return []

    def _fatal(self, error: ClientError) -> None:
        self.failure = error
        self._on_fatal(error)

    def _run(self) -> None:
        sock = self._zctx.socket(zmq.DEALER)
        monitor = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            for option, value in self._socket_options.items():
                sock.setsockopt(option, value)
            monitor = sock.get_monitor_socket(_EVENTS)
            sock.connect(self.address)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            while not self._closed.is_set():
                self._pass(sock, monitor, poller)
        finally:  # whatever raised above: the sockets close, or closing the context would hang
            if monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
                monitor.close(0)
            sock.close(0)

    def _pass(self, sock: zmq.Socket, monitor: zmq.Socket, poller: zmq.Poller) -> None:
        """One turn: wait for something to do, then send what is queued and handle what arrived."""
        events = dict(poller.poll(1000))
        if self._wake_r in events:
            os.read(self._wake_r, 65536)
        while monitor.poll(0):
            for frames in self._on_event(recv_monitor_message(monitor)):
                self._send(sock, frames)
        for frames in self._on_idle():
            self._send(sock, frames)
        while True:
            try:
                self._send(sock, self._outbox.get_nowait())
            except queue.Empty:
                break
        while (frames := self._receive(sock)) is not None:
            msg, body = self._decode(frames)
            self._on_message(msg, body)

    def _send(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        protocol.send(sock, frames)

    def _receive(self, sock: zmq.Socket) -> list[bytes] | None:
        try:
            return protocol.recv(sock, zmq.NOBLOCK)
        except zmq.Again:
            return None

    def _decode(self, frames: list[bytes]) -> tuple[Any, list[bytes]]:
        return protocol.decode(frames, protocol.CLIENT_REPLIES)
