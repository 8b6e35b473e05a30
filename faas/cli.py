"""``faas``: the client's own commands (the endpoint has ``faas-endpoint``)."""

from __future__ import annotations

import sys

import click

from faas import keys
from faas.errors import EndpointError
from faas.home import faas_home


@click.group()
@click.version_option(package_name="faas")
def main() -> None:
    """faas client tools (state under $FAAS_HOME, default ~/.faas)."""


@main.command()
def keygen() -> None:
    """Print this user's client public key, creating the key pair if there is none.

    Give the key to the endpoint's owner, who runs
    `faas-endpoint authorize NAME KEY`; then connect with
    Executor(endpoint="tcp://HOST:PORT", server_key=ENDPOINT_KEY).
    """
    folder = faas_home() / "keys"
    existed = (folder / "client.key_secret").exists()
    pair = keys.client_pair()
    click.echo(pair.public_text)
    if not existed:
        click.echo(f"created {folder / 'client.key_secret'} (keep it private)", err=True)


@main.command()
@click.argument("endpoint")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True,
              help="Port of the dashboard's web page (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve it on; any but a loopback address asks for a token, which the URL carries.")
@click.option("--period", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between two looks at the endpoint.")
@click.option("--server-key", help="tcp:// endpoints: the endpoint's public key (faas-endpoint status shows it).")
@click.option("--client-key", type=click.Path(dir_okay=False), help="tcp:// endpoints: this client's secret key file.")
@click.option("--ssh-option", "ssh_options", multiple=True, help="ssh:// endpoints: an extra ssh argument (repeat).")
@click.option("--remote-python", help="ssh:// endpoints: the python that runs faas there.")
@click.option("--remote-command", help="ssh:// endpoints: the command that runs faas-endpoint there.")
@click.option("--remote-faas-home", help="ssh:// endpoints: FAAS_HOME there.")
def dashboard(endpoint: str, port: int, host: str, period: float, **options) -> None:
    """Serve a live view of ENDPOINT's fleet on a local web page.

    ENDPOINT is what an Executor takes: a name, ipc://PATH, ssh://[USER@]HOST[:PORT]/NAME or
    tcp://HOST:PORT. The page comes through that connection: nothing web runs on the endpoint's side.
    """
    try:
        from faas.dashboard.app import serve
    except ImportError as e:
        raise click.ClickException(f"the dashboard needs its extra ({e}): pip install 'faas[dashboard]'") from None
    transport = {k: (list(v) if k == "ssh_options" else v) for k, v in options.items() if v}
    try:
        serve(endpoint, host=host, port=port, period=period, echo=click.echo, **transport)
    except (EndpointError, TypeError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
