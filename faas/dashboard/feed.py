"""The dashboard's one link to its endpoint, over the transport an Executor
would use (a name, ``ipc://``, ``ssh://`` or ``tcp://``): it asks for the
endpoint's view every ``period`` seconds, whatever number of pages are open,
and keeps the newest view and the invocation stream for them."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from faas import protocol
from faas.client.connection import Connection
from faas.client.transport import open_transport
from faas.endpoint.fleetview import STREAM

log = logging.getLogger(__name__)


class Feed:
    def __init__(self, endpoint: str, period: float = 1.0, timeout: float = 10.0, **transport_options: Any):
        self.endpoint = endpoint
        self.period, self.timeout = period, timeout
        self.transport = open_transport(endpoint, **transport_options)
        self.view: dict[str, Any] | None = None
        self.stream: deque[list] = deque(maxlen=STREAM)  # (n, worker, started, finished, state)
        self.error: str | None = None  # why the newest view is missing or old
        self._refusal: str | None = None  # the endpoint refused this client's key (tcp://)
        self.updated = 0.0  # when the newest view came (time.time())
        self._cursor = 0
        self._ask_lock = threading.Lock()  # one request at a time: a reply belongs to the one waiting
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._conn = Connection(self.transport.address, lambda msg, body: self._replies.put(msg),
                                on_refused=self._refused, socket_options=self.transport.socket_options)
        self._thread = threading.Thread(target=self._poll, name="faas-dashboard-feed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=self.timeout + 1)
        self._conn.close()
        self.transport.close()

    def invocation(self, inv_id: str) -> dict[str, Any]:
        """One invocation's record from the endpoint's store (error, attempt history)."""
        reply = self._ask(protocol.FleetRequest(invocation=inv_id),
                          lambda v: "invocation" in v and (v["invocation"] or {}).get("id", inv_id) == inv_id)
        if reply is None:
            return {"invocation": None, "error": self.error}
        return reply

    def _refused(self, detail: str) -> None:
        self._refusal = self.error = str(self.transport.refused(detail))

    def _poll(self) -> None:
        while not self._closed.is_set():
            started = time.monotonic()
            view = self._ask(protocol.FleetRequest(after=self._cursor), lambda v: "cursor" in v)
            if view is not None:
                if view["cursor"] < self._cursor or view["started_at"] != (self.view or view)["started_at"]:
                    self.stream.clear()  # the endpoint restarted: its stream starts again
                self.stream.extend(view.pop("stream"))
                self._cursor = view["cursor"]
                self.view, self.updated, self.error = view, time.time(), None
            self._closed.wait(max(0.0, self.period - (time.monotonic() - started)))

    def _ask(self, request: protocol.FleetRequest, fits) -> dict[str, Any] | None:
        with self._ask_lock:
            while not self._replies.empty():  # a late reply to a request that timed out
                self._replies.get_nowait()
            self._conn.send(protocol.encode(request))
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = self._replies.get(timeout=left)
                except queue.Empty:
                    break
                if isinstance(msg, protocol.FleetReply) and fits(msg.view):
                    return msg.view
                if isinstance(msg, protocol.Error):
                    self.error = f"the endpoint refused: {msg.message}"
                    return None
            detail = f": {self._conn.last_failure}" if self._conn.last_failure else ""
            self.error = self._refusal or str(self.transport.unreachable(self.timeout, detail))
            return None
