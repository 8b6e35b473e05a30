"""``faas``: the client's own commands (the endpoint has ``faas-endpoint``)."""

from __future__ import annotations

import sys

import click

from faas import keys
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


if __name__ == "__main__":
    sys.exit(main())
