"""Remote access to an endpoint over ``tcp://``: CurveZMQ encryption and the
list of client keys let in (``authorized_clients`` in the endpoint folder).

The list is read again whenever the file changes, so ``faas-endpoint
authorize`` and ``revoke`` act on a running daemon: an unknown key fails its
handshake (ZAP asks per connection), and a revoked key's open connection is
refused message by message and gets no more results. The ``ipc://`` socket is
bound before CURVE is switched on, so it stays plain: its file mode (0600) is
its protection.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from faas.errors import EndpointError
from faas.keys import KeyPair, check_public_key, ensure_pair

log = logging.getLogger(__name__)
ZAP_DOMAIN = "faas"


class AuthorizedClients:
    """The allowed client keys: one Z85 key per line, then an optional comment.

    Each instance caches the file and re-reads it when its inode, size or mtime
    changes (writes replace the file, so every write is seen)."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple | None = None
        self._keys: dict[str, str] = {}

    def keys(self) -> dict[str, str]:
        """key -> comment."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._keys = None, {}
            return self._keys
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._keys = _parse(self.path.read_text())
            self._stamp = stamp
        return self._keys

    def allows(self, key: str) -> bool:
        return key in self.keys()

    def add(self, key: str, comment: str = "") -> bool:
        """Returns False when the key was already there."""
        check_public_key(key)
        keys = dict(self.keys())
        if key in keys:
            return False
        keys[key] = comment
        self._write(keys)
        return True

    def remove(self, key: str) -> bool:
        keys = dict(self.keys())
        if keys.pop(key, None) is None:
            return False
        self._write(keys)
        return True

    def _write(self, keys: dict[str, str]) -> None:
        text = "".join(f"{k} {c}".rstrip() + "\n" for k, c in keys.items())
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".authorized-")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)


def _parse(text: str) -> dict[str, str]:
    keys = {}
    for line in text.splitlines():
        key, _, comment = line.strip().partition(" ")
        if key and not key.startswith("#"):
            try:
                check_public_key(key)
            except ValueError:
                log.warning("ignoring a malformed line in authorized_clients: %r", line[:80])
                continue
            keys[key] = comment.strip()
    return keys


class _ZapPolicy:
    """Asked by the ZAP thread for every CURVE handshake."""

    def __init__(self, path: Path):
        self.clients = AuthorizedClients(path)  # its own cache: it runs on another thread

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.clients.allows(key.decode())
        if not allowed:
            log.warning("refused a tcp client with an unknown key %s", key.decode())
        return allowed


class TcpListeners:
    """Binds ``tcp://`` listeners on the endpoint's ROUTER socket, with the
    endpoint as CURVE server, and vets each message's client key."""

    def __init__(self, auth: ThreadAuthenticator, sock: zmq.Socket, keys: KeyPair, authorized: Path,
                 listen: list[str]):
        self.clients = AuthorizedClients(authorized)
        self._peer_keys: dict[bytes, str] = {}  # ROUTER identity -> CURVE client key
        auth.configure_curve_callback(ZAP_DOMAIN, _ZapPolicy(authorized))
        sock.curve_server = True
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
        sock.zap_domain = ZAP_DOMAIN.encode()
        self.addresses = []
        for address in listen:
            try:
                sock.bind(address)
            except zmq.ZMQError as e:
                raise EndpointError(f"cannot listen on {address}: {e}") from None
            self.addresses.append(sock.last_endpoint.decode())  # the real port for :0

    def refused_key(self, ident: bytes, key: str | None) -> str | None:
        """The client ``key`` (the message's ZAP user) when it is no longer
        authorised; None for authorised and for ``ipc://`` peers (no key)."""
        if key is None:
            return None
        self._peer_keys[ident] = key
        return None if self.clients.allows(key) else key

    def revoked_key(self, ident: bytes) -> str | None:
        """The key of a known peer that is no longer authorised."""
        key = self._peer_keys.get(ident)
        return None if key is None or self.clients.allows(key) else key

    def revoked(self) -> list[tuple[bytes, str]]:
        """(identity, key) of every known peer whose key was revoked."""
        allowed = self.clients.keys()
        return [(ident, key) for ident, key in self._peer_keys.items() if key not in allowed]

    def forget(self, ident: bytes) -> None:
        self._peer_keys.pop(ident, None)


def endpoint_keys(folder: Path) -> KeyPair:
    """The endpoint's own key pair, made with the endpoint (or at its first start)."""
    return ensure_pair(folder, "endpoint")
