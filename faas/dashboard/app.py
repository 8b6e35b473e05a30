"""Serve the dashboard's pages with a Bokeh server (as Dask does): its JavaScript
comes from the installed bokeh package, so the pages work offline.

Bound to a loopback address it admits anyone on this machine, like Dask's; bound
to another address it asks for a random token, which the printed URL carries
and a cookie keeps for the pages that follow.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import signal
import socket
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.auth_provider import AuthProvider
from bokeh.server.server import Server
from tornado.web import RequestHandler

from faas.dashboard.feed import Feed
from faas.dashboard.pages import PAGES, page

log = logging.getLogger(__name__)
COOKIE = "faas_dashboard"


class TokenAuth(AuthProvider):
    """Admits a request whose ``token`` argument, or cookie, is the token."""

    def __init__(self, token: str):
        self.token = token
        super().__init__()

    @property
    def get_user(self):
        def user(handler: RequestHandler) -> str | None:
            given = handler.get_argument("token", None)
            if given is not None and hmac.compare_digest(given, self.token):
                handler.set_cookie(COOKIE, given, httponly=True, samesite="Strict")
                return "viewer"
            cookie = handler.get_cookie(COOKIE)
            return "viewer" if cookie is not None and hmac.compare_digest(cookie, self.token) else None
        return user

    @property
    def login_url(self) -> str:
        return "/token-required"

    @property
    def login_handler(self):
        class Refuse(RequestHandler):
            def get(self) -> None:
                self.set_status(403)
                self.finish("this dashboard needs the token of the URL that `faas dashboard` printed\n")
        return Refuse


class _ToOverview(RequestHandler):
    def get(self) -> None:
        query = self.request.query
        self.redirect("/overview" + (f"?{query}" if query else ""))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def make_server(feed: Feed, host: str = "127.0.0.1", port: int = 8787,
                token: bool | None = None) -> tuple[Server, str]:
    """The Bokeh server of ``feed``'s pages (not started) and the URL to open.
    ``token``: whether a token is asked for (None: unless ``host`` is a loopback address)."""
    if port == 0:  # a free one now: the websocket's allowed origins name it
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    apps = {f"/{name}": Application(FunctionHandler(page(name, feed))) for name in PAGES}
    options: dict[str, Any] = {}
    secret = secrets.token_urlsafe(24) if (not is_loopback(host) if token is None else token) else None
    if secret is not None:
        options.update(auth_provider=TokenAuth(secret), allow_websocket_origin=["*"])
    else:
        options["allow_websocket_origin"] = [f"{h}:{port}" for h in ("localhost", "127.0.0.1", host)]
    server = Server(apps, address=host, port=port, extra_patterns=[("/", _ToOverview)], **options)
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return server, f"http://{shown}:{server.port}/overview" + (f"?token={secret}" if secret else "")


def serve(endpoint: str, host: str = "127.0.0.1", port: int = 8787, period: float = 1.0,
          echo=print, **transport_options: Any) -> None:
    """Run the dashboard until SIGINT or SIGTERM."""
    feed = Feed(endpoint, period=period, **transport_options)
    try:
        server, url = make_server(feed, host, port)
        server.start()
        loop = server.io_loop
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
        echo(f"dashboard of {endpoint}: {url}")
        loop.start()
        server.stop()
    finally:
        feed.close()
