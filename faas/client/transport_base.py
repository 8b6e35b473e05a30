"""The transport every other one extends. It lives apart from
:mod:`faas.client.transport`, which chooses among them, so that a transport
module (:mod:`faas.client.ssh`) and the chooser do not import each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faas.errors import ClientError, EndpointError, NotAuthorised


class Transport:
    """A Unix socket on this machine, protected by its file mode. ``on_fatal``
    (set by the Executor) hears of a thread of the transport that failed."""

    def __init__(self, address: str):
        self.address = address
        self.socket_options: dict[int, Any] = {}
        self.on_fatal: Callable[[ClientError], None] = lambda error: None

    def unreachable(self, timeout: float, detail: str) -> EndpointError:
        return EndpointError(f"no answer from the endpoint at {self.address} within {timeout:g}s{detail}")

    def refused(self, detail: str) -> NotAuthorised:
        return NotAuthorised(f"the endpoint at {self.address} refused this client: {detail}")

    def close(self) -> None:
        """Release what the transport started (a tunnel)."""
