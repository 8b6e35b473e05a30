"""`faas dashboard` in a real browser (Debian's headless Chromium, driven by
Playwright) against a real endpoint while invocations run, some failing, some
cancelled, and a worker killed: the counts on the page equal the store's, a
failure's traceback opens, the page follows the work, the lost worker shows
with its cause. The same over ssh:// through the test sshd.

The screenshots the test takes are the documentation's: to refresh them, run
``FAAS_DASHBOARD_SCREENSHOTS=docs/dashboard .venv/bin/python -m pytest tests/test_dashboard.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, RunningEndpoint, _start_or_skip, local_config, write_config
from services.sshd import sshd_server

from faas import Executor, ctx_function
from faas.store import Store, sqlite_url

pytest.importorskip("bokeh")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
# as root, in a sandbox without a network: no sandbox of its own, and no calls home
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
REMOTE_FAAS = f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m faas.endpoint.cli"


@ctx_function(model=dict)
def work(ctx, x, seconds=0.05):
    time.sleep(seconds)
    if x < 0:
        raise ValueError(f"claim {x} cannot be verified")
    return x


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    home, name = tmp_path_factory.mktemp("dash") / "faas-home", f"dash-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAAS_HOME", str(home))
        write_config(home, name, local_config(workers=2, max_batch=4, heartbeat=(2, 10)))
        ep = RunningEndpoint(home, name)
        ep.start()
        try:
            yield ep
        finally:
            ep.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            raise AssertionError(f"{CHROMIUM} is missing: bash .ci/services.sh install brings it")
        pytest.skip(f"no {CHROMIUM} (bash .ci/services.sh install)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("FAAS_DASHBOARD_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


@contextlib.contextmanager
def dashboard(ep: RunningEndpoint, address: str, *options: str):
    """`faas dashboard ADDRESS --port 0` as its own process; yields (its URL, its process).
    Its output goes to a file (a pipe nobody reads would stop it), shown if it fails."""
    log = ep.home.parent / f"dashboard-{uuid.uuid4().hex[:6]}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faas.cli", "dashboard", address, "--port", "0", *options],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "FAAS_HOME": str(ep.home)})
    try:
        url = wait_for(lambda: re.search(r"http://\S+", log.read_text()) or proc.poll() is not None,
                       what="the dashboard's URL")
        assert proc.poll() is None, f"faas dashboard ended:\n{log.read_text()}"
        yield url[0], proc
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()


def store_counts(ep: RunningEndpoint) -> dict[str, int]:
    store = Store(sqlite_url(ep.path))
    try:
        return store.counts_by_state()
    finally:
        store.close()


def worker_pids(ep: RunningEndpoint) -> set[int]:
    """Worker processes that ran invocations (a worker pool has other processes besides)."""
    store = Store(sqlite_url(ep.path))
    try:
        return {w["pid"] for w in store.workers()}
    finally:
        store.close()


def page_counts(page) -> dict[str, int]:
    return {state: int(page.locator(f"#count-{state}").inner_text())
            for state in ("pending", "dispatched", "succeeded", "failed", "cancelled")}


def wait_for(condition, timeout: float = 30, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not come within {timeout}s"
        time.sleep(0.25)
    return value


def test_dashboard_follows_a_run_with_failures_cancels_and_a_lost_worker(fleet, browser, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    with dashboard(fleet, fleet.name) as (url, _), Executor(endpoint=fleet.name) as ex:
        page.goto(url)
        before = wait_for(lambda: page.locator("#count-succeeded").count() and page_counts(page))
        futures = [ex.submit(work, x) for x in range(40)] + [ex.submit(work, -x) for x in (1, 2, 3)]
        slow = [ex.submit(work, 100 + x, 3.0) for x in range(6)]
        wait_for(lambda: page_counts(page)["succeeded"] > before["succeeded"], what="a first result")
        for fut in slow[3:]:
            fut.interrupt()  # cancelled, queued or running
        wait_for(lambda: slow[0].running() or slow[1].running(), what="a slow invocation")
        victim = wait_for(lambda: next((w for w in fleet.workers() if w.pid in worker_pids(fleet)), None))
        victim.send_signal(signal.SIGKILL)  # a worker killed mid-run: its invocation runs again elsewhere
        for fut in futures + slow[:3]:
            with contextlib.suppress(Exception):
                fut.result(timeout=90)
        expected = store_counts(fleet)
        assert expected["failed"] >= 3 and expected["cancelled"] >= 1, expected
        wait_for(lambda: int(page.locator("#workers-lost").inner_text()) >= 1, what="the lost worker")
        wait_for(lambda: page_counts(page) == store_counts(fleet), what="the store's counts")
        page.screenshot(path=shots / "overview.png", full_page=True)

        page.goto(url.replace("/overview", "/stream"))
        cell = page.locator(".slick-cell", has_text="cannot be verified").first
        cell.wait_for(timeout=15_000)
        cell.click()
        detail = page.locator("#invocation-detail")
        detail.wait_for(timeout=15_000)
        text = detail.inner_text()
        assert "Traceback" in text and "ValueError: claim -" in text and "state failed" in text, text
        page.screenshot(path=shots / "stream.png", full_page=True)

        page.goto(url.replace("/overview", "/workers"))
        lost = page.locator(".slick-row", has_text=f":{victim.pid}")  # the lost one, by host:pid, with its cause
        lost.first.wait_for(timeout=15_000)
        assert "unreachable" in lost.first.inner_text() or "Lost" in lost.first.inner_text()
        for column in ("parked", "from source", "from peers", "copies in/out"):  # context mobility
            page.locator(".slick-header-column", has_text=column).first.wait_for(timeout=15_000)
        page.screenshot(path=shots / "workers.png", full_page=True)

        page.goto(url.replace("/overview", "/timeline"))
        page.wait_for_timeout(1500)
        page.screenshot(path=shots / "timeline.png", full_page=True)
    page.close()


def test_dashboard_over_ssh(fleet, browser, tmp_path):
    """The dashboard of a remote endpoint through sshd: the endpoint's side runs no
    web server and opens no port (it has no tcp:// listeners); the page is served here."""
    with contextlib.ExitStack() as stack:
        server = _start_or_skip(stack, sshd_server, tmp_path)
        address = f"ssh://{server.user}@{server.host}:{server.port}/{fleet.name}"
        ssh_options = [f"--ssh-option={a}" for a in server.ssh_args()[2:]]
        with Executor(endpoint=fleet.name) as ex:
            assert [f.result(timeout=60) for f in [ex.submit(work, x) for x in range(5)]] == list(range(5))
        with dashboard(fleet, address, *ssh_options, "--remote-faas-home", str(fleet.home),
                       "--remote-command", REMOTE_FAAS) as (url, proc):
            port = int(url.split(":")[2].split("/")[0])
            daemon = psutil.Process(fleet.pid)
            assert port not in {c.laddr.port for c in daemon.net_connections("tcp") if c.status == "LISTEN"}
            page = browser.new_page()
            page.goto(url)
            wait_for(lambda: page.locator("#count-succeeded").count() and page_counts(page) == store_counts(fleet),
                     what="the store's counts over ssh")
            assert "live" in page.locator("#feed-state").inner_text()
            page.close()


def test_a_dashboard_served_beyond_loopback_asks_for_its_token(fleet):
    """Served on another address, the pages need the token the printed URL carries
    (here forced on loopback: the tests listen on loopback only). The server runs in
    a thread with its own event loop: Playwright's holds this thread's."""
    from faas.dashboard.app import make_server
    from faas.dashboard.feed import Feed

    feed = Feed(fleet.name)
    started: queue.Queue = queue.Queue()

    def serve() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        server, url = make_server(feed, "127.0.0.1", 0, token=True)
        server.start()
        started.put((server, url))
        server.io_loop.start()
        server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server, url = started.get(timeout=30)
    bare = url.split("?")[0]
    try:
        answers = {name: _get(address) for name, address in
                   (("bare", bare), ("wrong", bare + "?token=guess"), ("token", url))}
    finally:
        server.io_loop.add_callback(server.io_loop.stop)
        thread.join(timeout=10)
        feed.close()
    assert answers["bare"][0] == 403 and "needs the token" in answers["bare"][1]
    assert answers["wrong"][0] == 403
    assert answers["token"][0] == 200 and "faas: Overview" in answers["token"][1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
