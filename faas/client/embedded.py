"""An endpoint that lives as long as one Executor, in a private temporary
FAAS_HOME, so a script runs with nothing started beforehand.

It is configured, started and stopped through ``faas-endpoint`` in a
subprocess: the client package does not import the endpoint's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from faas.errors import EndpointError
from faas.home import EXIT_WITH_ENV, EndpointDir


class EmbeddedEndpoint:
    def __init__(self, workers: int | None = None):
        """``workers``: None for the default layout (one worker per GPU found, else CPU workers)."""
        self.home = Path(tempfile.mkdtemp(prefix="faas-embedded-"))
        self.epdir = EndpointDir.of("embedded", home=self.home)
        try:
            self._cli("configure", *(["--workers", str(workers)] if workers else []))
            self._cli("start", exit_with=os.getpid())  # never outlive a killed client
        except BaseException:
            shutil.rmtree(self.home, ignore_errors=True)
            raise

    @property
    def address(self) -> str:
        return self.epdir.address

    def close(self) -> None:
        try:
            self._cli("stop")
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def _cli(self, command: str, *args: str, exit_with: int | None = None) -> None:
        env = dict(os.environ, FAAS_HOME=str(self.home))
        if exit_with is not None:
            env[EXIT_WITH_ENV] = str(exit_with)
        proc = subprocess.run([sys.executable, "-m", "faas.endpoint.cli", command, self.epdir.name, *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            log = self.epdir.log.read_text(errors="replace").splitlines()[-30:] if self.epdir.log.exists() else []
            raise EndpointError("\n".join([f"embedded endpoint: faas-endpoint {command} failed:",
                                           proc.stderr.strip() or proc.stdout.strip(),  # one line; the log goes
                                           *(["its log:", *log] if command == "start" else [])]))  # with its home
