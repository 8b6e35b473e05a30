"""The faas-endpoint CLI lifecycle on a real daemon, a restart that keeps the
invocation history, and owner-only modes for everything under $FAAS_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from click.testing import CliRunner
from conftest import RunningEndpoint, cli, local_config, run_client, status, write_config

from faas.endpoint import cli as endpoint_cli
from faas.home import EndpointDir, read_pid
from faas.store import Store, sqlite_url


def test_lifecycle_configure_start_status_list_stop(faas_home, tmp_path):
    out = cli("configure", "life").stdout
    config = faas_home / "endpoints" / "life" / "config.yaml"
    assert str(config) in out and "LocalProvider" in config.read_text()
    assert "already exists" in cli("configure", "life", check=False).stderr
    assert "stopped" in cli("list").stdout

    ep = RunningEndpoint(faas_home, "life")
    ep.start()
    try:
        info = status("life")
        assert info["running"] and info["pid"] == ep.pid
        assert info["address"].startswith("ipc://") and os.stat(info["address"][6:]).st_mode & 0o777 == 0o600
        assert set(info["invocations"]) == {"pending", "dispatched", "succeeded", "failed", "cancelled"}
        assert "running" in cli("list").stdout
        assert "already running" in cli("start", "life", check=False).stderr
        text = cli("status", "life").stdout
        assert "running, pid" in text and "invocations:" in text
    finally:
        ep.stop()
    assert not status("life")["running"]
    assert "was not running" in cli("stop", "life").stdout


def test_bad_names_and_missing_endpoints_are_named(faas_home):
    assert "invalid endpoint name" in cli("configure", "../evil", check=False).stderr
    assert "no endpoint 'ghost'" in cli("start", "ghost", check=False).stderr
    write_config(faas_home, "broken", "engine:\n  max_workers_per_node: lots\n")
    err = cli("start", "broken", check=False).stderr
    assert "config.yaml" in err and "engine.max_workers_per_node" in err


def test_restart_keeps_invocation_history(faas_home, tmp_path):
    write_config(faas_home, "durable", local_config(workers=1))
    ep = RunningEndpoint(faas_home, "durable")
    ep.start()
    try:
        run_client("pid_loader.py", "durable", str(tmp_path / "inits.log"), "30")
        before = status("durable")
    finally:
        ep.stop()
    ep.start()
    try:
        after = status("durable")
        assert after["pid"] != before["pid"]
        assert after["invocations"] == before["invocations"] and before["invocations"]["succeeded"] == 30
        assert [c["inits"] for c in after["contexts"]] == [c["inits"] for c in before["contexts"]] == [1]
    finally:
        ep.stop()


def _open_to_others(home: Path) -> list[tuple[str, str]]:
    """Every path under ``home`` (itself included, sockets too) with any group or other permission."""
    paths = [home, *home.rglob("*")]
    return [(str(p), oct(p.lstat().st_mode & 0o777)) for p in paths if p.lstat().st_mode & 0o077]


def test_configure_writes_owner_only(faas_home):
    cli("configure", "private")
    assert _open_to_others(faas_home) == []
    assert (faas_home / "endpoints" / "private" / "config.yaml").stat().st_mode & 0o777 == 0o600


def test_everything_under_faas_home_is_owner_only_while_running(endpoint, faas_home, tmp_path):
    # config.yaml and its folders written with the umask's modes, as by an older faas or an editor
    write_config(faas_home, "private", local_config(workers=1))
    assert _open_to_others(faas_home)
    endpoint("private", local_config(workers=1))
    run_client("pid_loader.py", "private", str(tmp_path / "inits.log"), "1")
    assert status("private")["invocations"]["succeeded"] == 1
    assert list((faas_home / "endpoints" / "private" / "runinfo").rglob("*.key_secret"))  # Parsl's certificates
    assert _open_to_others(faas_home) == []


def test_report_plot_without_matplotlib_names_the_extra(faas_home, tmp_path, monkeypatch):
    write_config(faas_home, "noplot", local_config(workers=1))
    Store(sqlite_url(faas_home / "endpoints" / "noplot")).close()  # an (empty) store, as a started endpoint leaves
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # None: an import of it fails
    result = CliRunner().invoke(endpoint_cli.main, ["report", "noplot", "--plot", str(tmp_path / "t.png")])
    assert result.exit_code == 1 and "invocations:" in result.output  # the text report still comes
    assert "pip install 'faas[plot]'" in result.output and not (tmp_path / "t.png").exists()


def test_read_pid_ignores_dead_and_reused_pids(tmp_path):
    epdir = EndpointDir.of("pids", home=tmp_path)
    epdir.path.mkdir(parents=True)
    assert read_pid(epdir) is None  # no pid file
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))"]
    ours = subprocess.Popen([*sleeper, "60", "faas.endpoint.daemon", "pids"])
    other = subprocess.Popen([*sleeper, "60", "unrelated"])
    done = subprocess.Popen([*sleeper, "0", "faas.endpoint.daemon", "pids"])
    try:
        for proc, expected in ((ours, ours.pid), (other, None)):
            epdir.pidfile.write_text(f"{proc.pid}\n")
            assert read_pid(epdir) == expected
        epdir.pidfile.write_text(f"{done.pid}\n")
        while psutil.Process(done.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
            time.sleep(0.05)
        assert read_pid(epdir) is None
        done.wait()  # reaped: the pid names no process
        assert read_pid(epdir) is None
        epdir.pidfile.write_text("garbage\n")
        assert read_pid(epdir) is None
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


def test_both_commands_print_their_version():
    from importlib.metadata import version

    from faas import cli as client_cli

    for main in (client_cli.main, endpoint_cli.main):
        result = CliRunner().invoke(main, ["--version"])
        assert result.exit_code == 0 and version("faas") in result.output


def test_every_command_on_a_corrupt_store_says_what_is_wrong_in_one_line(faas_home):
    """Row "a corrupt store gives a raw traceback": each command that opens the
    store (start too: its daemon stops at once) exits non-zero with one line
    that names the store and what to do."""
    write_config(faas_home, "corrupt", local_config(workers=1))
    (faas_home / "endpoints" / "corrupt" / "store.db").write_bytes(b"this is not a database\0" * 400)
    for args in (["status", "corrupt"], ["status", "corrupt", "--json"], ["report", "corrupt"],
                 ["purge", "corrupt"], ["upgrade", "corrupt"], ["start", "corrupt"]):
        proc = cli(*args, check=False)
        out = (proc.stdout + proc.stderr).strip()
        assert proc.returncode != 0 and "Traceback" not in out and len(out.splitlines()) == 1, (args, out)
        assert "store.db" in out and "damaged" in out, (args, out)
    assert read_pid(EndpointDir.of("corrupt")) is None  # no daemon was left running


def test_a_key_that_begins_with_a_dash_is_authorised_and_revoked(faas_home):
    """Z85 has "-" among its characters: about one key in 85 begins with it."""
    import zmq.utils.z85 as z85

    key = z85.encode(bytes([197]) + bytes(31)).decode()  # "-q/(r000..."
    assert key.startswith("-"), key
    cli("configure", "dash")
    assert f"authorised {key} on dash" in cli("authorize", "dash", key, "--comment", "laptop").stdout
    assert f"{key} was already authorised on dash" in cli("authorize", "dash", key).stdout
    assert f"revoked {key} on dash" in cli("revoke", "dash", key).stdout
    assert f"{key} is not authorised on dash" in cli("revoke", "dash", key, check=False).stderr
    assert "Usage" in cli("authorize", "dash", key, "--no-such-option", check=False).stderr
