"""``faas-endpoint``: configure, start, stop and inspect endpoints."""

from __future__ import annotations

import contextlib
import json
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from faas import keys
from faas.endpoint import daemon
from faas.endpoint.access import AuthorizedClients, endpoint_keys
from faas.endpoint.config import ConfigError, load_config
from faas.endpoint.templates import PROVIDERS, config_template
from faas.errors import EndpointError, StoreUnavailable
from faas.home import EndpointDir, list_endpoints, read_pid, write_private


def _endpoint(name: str, must_exist: bool = True) -> EndpointDir:
    try:
        epdir = EndpointDir.of(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    if must_exist and not epdir.exists():
        raise click.ClickException(f"no endpoint {name!r} (run: faas-endpoint configure {name})")
    return epdir


@contextlib.contextmanager
def _store(epdir: EndpointDir):
    """The endpoint's store (its config names it), whether the daemon runs or not.
    What goes wrong with it is said in one line (a corrupt, missing, locked or newer store)."""
    try:
        config = load_config(epdir.config)
        store = daemon.open_store(epdir, config)
    except (ConfigError, StoreUnavailable) as e:
        raise click.ClickException(str(e)) from None
    try:
        yield store, config
    except SQLAlchemyError as e:
        raise click.ClickException(str(daemon.store_error(epdir, config, e))) from None
    finally:
        store.close()


# A Z85 key may begin with "-": read it as the argument it is, not as an unknown option.
KEY_ARGUMENT = {"ignore_unknown_options": True}


@click.group()
@click.version_option(package_name="faas")
def main() -> None:
    """Manage faas endpoints (state under $FAAS_HOME, default ~/.faas)."""


@main.command()
@click.argument("name")
@click.option("--provider", type=click.Choice(PROVIDERS), default="local", show_default=True,
              help="Where the workers run.")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="GPUs per node, one worker each [default: local: this node's GPUs "
                   "(CUDA_VISIBLE_DEVICES, else nvidia-smi), none: CPU workers; 1 on a cluster].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Workers per node [default: one per GPU; locally at most one per GPU found].")
@click.option("--partition", default=None, help="Slurm partition or PBS queue.")
def configure(name: str, provider: str, gpus: int | None, workers: int | None, partition: str | None) -> None:
    """Create NAME with a commented config for PROVIDER; edit it before starting."""
    epdir = _endpoint(name, must_exist=False)
    if epdir.exists():
        raise click.ClickException(f"endpoint {name!r} already exists: {epdir.config}")
    try:
        text = config_template(name, provider, gpus=gpus, workers=workers, partition=partition)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    epdir.make_private()
    write_private(epdir.config, text)
    click.echo(f"created {epdir.config}")
    click.echo(f"public key (for tcp:// clients' server_key): {endpoint_keys(epdir.path).public_text}")


@main.command()
@click.argument("name")
@click.option("--foreground", is_flag=True, help="Stay in the foreground (logs to stderr).")
def start(name: str, foreground: bool) -> None:
    """Start NAME; returns once it accepts work."""
    epdir = _endpoint(name)
    try:
        if foreground:
            daemon.run(epdir)
            return
        pid = daemon.start_background(epdir)
    except (ConfigError, EndpointError, StoreUnavailable) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"endpoint {name} started (pid {pid}) at {epdir.address}")


@main.command()
@click.argument("name")
def stop(name: str) -> None:
    """Stop NAME and its workers."""
    epdir = _endpoint(name)
    click.echo(f"endpoint {name} stopped" if daemon.stop(epdir) else f"endpoint {name} was not running")


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(name: str, as_json: bool) -> None:
    """Show NAME's state, workers, contexts and invocation counts."""
    epdir = _endpoint(name)
    try:
        info = endpoint_status(epdir)
    except (ConfigError, EndpointError, StoreUnavailable) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"endpoint {name}: {'running, pid ' + str(info['pid']) if info['running'] else 'stopped'}")
    click.echo(f"  addresses:   {' '.join(info['addresses'])}")
    click.echo(f"  public key:  {info['public_key']}  ({len(info['authorized_clients'])} authorised clients)")
    if info["running"]:
        click.echo(f"  worker slots: {info['live']['worker_slots']}  backlog: {info['live']['backlog']}")
        if failing := info["live"].get("store_failing"):
            click.echo(f"  store: writes failing for {failing['failing_for']:.0f}s ({failing['cause']}); "
                       f"{info['live']['requests_waiting_for_store']} requests wait")
    click.echo("  invocations: " + ", ".join(f"{k} {v}" for k, v in info["invocations"].items()))
    click.echo(f"  workers seen: {len(info['workers'])}")
    for c in info["contexts"]:
        click.echo(f"  context {c['description']}: {c['inits']} inits ({c['init_seconds']:.1f}s), "
                   f"{c['init_failures']} failed inits")


def endpoint_status(epdir: EndpointDir) -> dict:
    """The store's record (available when stopped too) plus the live daemon's view."""
    config = load_config(epdir.config)
    pid = read_pid(epdir)
    store = daemon.open_store(epdir, config)
    try:
        info = {
            "name": epdir.name,
            "running": pid is not None,
            "pid": pid,
            "address": epdir.address,
            "addresses": [epdir.address],
            "public_key": endpoint_keys(epdir.path).public_text,
            "authorized_clients": [{"key": k, "comment": c}
                                   for k, c in AuthorizedClients(epdir.authorized_clients).keys().items()],
            "invocations": store.counts_by_state(),
            "contexts": store.context_summary(),
            "workers": store.workers(),
        }
    except SQLAlchemyError as e:
        raise daemon.store_error(epdir, config, e) from None
    finally:
        store.close()
    if pid is not None:
        info["live"] = daemon.request(epdir.address, "status", timeout=10)["status"]
        info["addresses"] = info["live"]["addresses"]
    return info


@main.command()
@click.argument("name")
@click.option("--older-than", type=float, default=None, metavar="SECONDS",
              help="Age of the results to delete (default: the config's store.retention).")
def purge(name: str, older_than: float | None) -> None:
    """Delete final invocations (results and errors) older than the retention time."""
    with _store(_endpoint(name)) as (store, config):
        n = store.purge(config.store.retention if older_than is None else older_than)
    click.echo(f"purged {n} invocations")


@main.command()
@click.argument("name")
def upgrade(name: str) -> None:
    """Bring NAME's store to this faas' schema revision (the daemon also does when it starts)."""
    with _store(_endpoint(name)) as (store, _):
        before, after = store.revisions
    if before == after:
        click.echo(f"store of {name} is at revision {after}, the newest: nothing to do")
    else:
        click.echo(f"store of {name} upgraded from revision {before or 'none (empty)'} to {after}")


@main.command()
@click.argument("name")
@click.option("--since", metavar="T", help="Only work since T: a duration back (90s, 30m, 1h, 2d) or an ISO time.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), metavar="FILE.png",
              help="Also draw the timeline (workers, completed invocations, context inits) into FILE.")
@click.option("--output", "outputs", type=click.IntRange(min=1), metavar="N",
              help="Also print what the last N invocations that wrote anything wrote (stdout, stderr, log records).")
def report(name: str, since: str | None, plot: str | None, outputs: int | None) -> None:
    """Per-worker and per-context figures from NAME's store (running or stopped)."""
    from faas.endpoint.timeline import MissingPlotExtra, plot_timeline
    from faas.store.report import build_report, build_timeline, parse_since, recent_output, render_output, render_text

    epdir = _endpoint(name)
    try:
        start = parse_since(since) if since is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None
    with _store(epdir) as (store, _):
        click.echo(f"endpoint {name}: " + render_text(build_report(store, start)), nl=False)
        if outputs:
            click.echo("\n" + render_output(recent_output(store, start, outputs)), nl=False)
        if plot:
            try:
                path = plot_timeline(build_timeline(store, start), plot, title=f"endpoint {name}")
            except MissingPlotExtra as e:
                raise click.ClickException(str(e)) from None
            click.echo(f"timeline written to {path}")


@main.command()
@click.argument("name")
def address(name: str) -> None:
    """Print NAME's ipc:// address if it is running (ssh:// clients ask this)."""
    epdir = _endpoint(name)
    if read_pid(epdir) is None:
        raise click.ClickException(f"endpoint {name!r} is not running (run: faas-endpoint start {name})")
    click.echo(epdir.address)


@main.command(context_settings=KEY_ARGUMENT)
@click.argument("name")
@click.argument("public_key")
@click.option("--comment", default="", help="A note kept beside the key, e.g. whose laptop it is.")
def authorize(name: str, public_key: str, comment: str) -> None:
    """Let the client with PUBLIC_KEY (printed by `faas keygen`; or a .key file)
    submit to NAME over tcp://. Takes effect at once, also on a running endpoint."""
    epdir = _endpoint(name)
    key = _public_key(public_key)
    added = AuthorizedClients(epdir.authorized_clients).add(key, " ".join(comment.split()))
    click.echo(f"authorised {key} on {name}" if added else f"{key} was already authorised on {name}")


@main.command(context_settings=KEY_ARGUMENT)
@click.argument("name")
@click.argument("public_key")
def revoke(name: str, public_key: str) -> None:
    """Withdraw PUBLIC_KEY's access to NAME; its open connections are refused too."""
    epdir = _endpoint(name)
    key = _public_key(public_key)
    if not AuthorizedClients(epdir.authorized_clients).remove(key):
        raise click.ClickException(f"{key} is not authorised on {name}")
    click.echo(f"revoked {key} on {name}")


def _public_key(value: str) -> str:
    try:
        return keys.public_key(value).decode()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="PUBLIC_KEY") from None


@main.command(name="list")
def list_() -> None:
    """List configured endpoints."""
    for epdir in list_endpoints():
        pid = read_pid(epdir)
        click.echo(f"{epdir.name}\t{'running' if pid else 'stopped'}\t{epdir.address}")


if __name__ == "__main__":
    sys.exit(main())
