"""Where an Executor's socket connects, chosen by the endpoint's address:

- ``NAME`` or ``ipc://PATH``: the endpoint's Unix socket on this machine;
- ``ssh://[user@]host[:port]/NAME``: that socket on another machine, forwarded
  by an OpenSSH tunnel (:mod:`faas.client.ssh`); the cluster opens no port;
- ``tcp://HOST:PORT``: one of the endpoint's ``listen`` sockets, encrypted and
  authenticated with CurveZMQ keys (:mod:`faas.keys`).

All of them carry the same protocol; they differ in the address the socket
connects to, its security options, and the errors that explain a failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import zmq

from faas import keys
from faas.client.ssh import SSHTransport
from faas.client.transport_base import Transport
from faas.errors import EndpointError, NotAuthorised
from faas.home import EndpointDir, read_pid

_TCP_ADDRESS = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


class TcpTransport(Transport):
    """``tcp://HOST:PORT`` with CURVE: ``server_key`` is the endpoint's public
    key (Z85 text or a .key file; ``faas-endpoint status NAME`` shows it), and
    ``client_key`` a secret key file (default: this user's, made on first use)."""

    def __init__(self, address: str, *, server_key: str | os.PathLike | None = None,
                 client_key: str | os.PathLike | None = None):
        match = _TCP_ADDRESS.match(address)
        if not match or int(match[2]) > 65535:
            raise EndpointError(f"{address!r} is not tcp://HOST:PORT")
        if server_key is None:
            raise EndpointError(f"{address} needs server_key=: the endpoint's public key, which "
                                "`faas-endpoint status NAME` shows on the endpoint's host")
        super().__init__(address)
        self.client = keys.client_pair(client_key)
        self.socket_options = {zmq.CURVE_SERVERKEY: keys.public_key(server_key),
                               zmq.CURVE_PUBLICKEY: self.client.public,
                               zmq.CURVE_SECRETKEY: self.client.secret}

    def _authorize_hint(self) -> str:
        return f"on the endpoint's host run: faas-endpoint authorize NAME {self.client.public_text}"

    def unreachable(self, timeout: float, detail: str) -> EndpointError:
        return EndpointError(
            f"no answer from the endpoint at {self.address} within {timeout:g}s: not authorised or "
            f"unreachable{detail}. Check the address and server_key; to let this client in, "
            f"{self._authorize_hint()}")

    def refused(self, detail: str) -> NotAuthorised:
        return NotAuthorised(f"the endpoint at {self.address} refused this client's key "
                             f"{self.client.public_text} ({detail}); {self._authorize_hint()}")


def open_transport(endpoint: str, **options: Any) -> Transport:
    """The transport for an endpoint name or address; ``options`` are those of
    its scheme (ssh:// and tcp:// take some, see their classes)."""
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
    if scheme == "ssh":
        return SSHTransport(endpoint, **options)
    if scheme == "tcp":
        return TcpTransport(endpoint, **options)
    if options:
        raise TypeError(f"{', '.join(sorted(options))}: options of ssh:// and tcp:// endpoints only")
    return Transport(resolve(endpoint))


def resolve(endpoint: str) -> str:
    """A local endpoint's name or ipc:// address -> the address to connect to."""
    if endpoint.startswith("ipc://"):
        if not Path(endpoint.removeprefix("ipc://")).exists():
            raise EndpointError(f"no endpoint socket at {endpoint}")
        return endpoint
    if "://" in endpoint:
        raise EndpointError(f"unsupported endpoint address {endpoint!r}: use a name, ipc://PATH, "
                            "ssh://[USER@]HOST[:PORT]/NAME or tcp://HOST:PORT")
    try:
        epdir = EndpointDir.of(endpoint)
    except ValueError as e:
        raise EndpointError(str(e)) from None
    if not epdir.exists():
        raise EndpointError(f"no endpoint named {endpoint!r} (run: faas-endpoint configure {endpoint})")
    if read_pid(epdir) is None:
        raise EndpointError(f"endpoint {endpoint!r} is not running (run: faas-endpoint start {endpoint})")
    return epdir.address
