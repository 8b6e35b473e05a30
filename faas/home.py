"""Where endpoints keep their state (``$FAAS_HOME/endpoints/NAME/``) and
whether an endpoint's daemon runs: what clients and the endpoint both need,
so it lives below :mod:`faas.client` and :mod:`faas.endpoint`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

# The pid of a process whose end stops the daemon (an embedded endpoint's client);
# set by whoever starts it, read by the daemon.
EXIT_WITH_ENV = "FAAS_EXIT_WITH_PID"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def faas_home() -> Path:
    return Path(os.environ.get("FAAS_HOME") or Path.home() / ".faas").expanduser()


@dataclass(frozen=True)
class EndpointDir:
    name: str
    path: Path

    @classmethod
    def of(cls, name: str, home: Path | None = None) -> EndpointDir:
        if not _NAME.match(name):
            raise ValueError(f"invalid endpoint name {name!r}: use letters, digits, '.', '_' and '-'")
        return cls(name, (home or faas_home()) / "endpoints" / name)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def socket(self) -> Path:
        return self.path / "endpoint.sock"

    @property
    def address(self) -> str:
        return f"ipc://{self.socket}"

    @property
    def authorized_clients(self) -> Path:
        return self.path / "authorized_clients"

    @property
    def pidfile(self) -> Path:
        return self.path / "daemon.pid"

    @property
    def log(self) -> Path:
        return self.path / "endpoint.log"

    @property
    def runinfo(self) -> Path:
        return self.path / "runinfo"

    def exists(self) -> bool:
        return self.config.exists()

    def make_private(self) -> None:
        """$FAAS_HOME, endpoints/ and this endpoint's folder, each created or tightened to 0700."""
        make_private(self.path.parent.parent, self.path.parent, self.path)


def make_private(*folders: Path) -> None:
    """Create each folder (give parents first) or tighten it to 0700: faas' folders hold
    sockets, stores and secret keys. mkdir's mode alone would leave parents to the umask."""
    for folder in folders:
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        folder.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read (0600), also when it exists with another mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def list_endpoints(home: Path | None = None) -> list[EndpointDir]:
    root = (home or faas_home()) / "endpoints"
    if not root.is_dir():
        return []
    return [EndpointDir(p.name, p) for p in sorted(root.iterdir()) if (p / "config.yaml").exists()]


def read_pid(epdir: EndpointDir) -> int | None:
    """The daemon's pid if it is alive; a stale pid file is ignored."""
    try:
        pid = int(epdir.pidfile.read_text().split()[0])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or not _is_our_daemon(proc, epdir):
            return None  # the daemon died, or its pid was reused by an unrelated process
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return None
    except psutil.AccessDenied:
        return pid  # another user's process hides its command line: trust the pid file
    return pid


def _is_our_daemon(proc: psutil.Process, epdir: EndpointDir) -> bool:
    cmdline = proc.cmdline()
    return any("faas" in arg for arg in cmdline) and epdir.name in cmdline
