"""An endpoint that lives as long as one Executor, in a private temporary
FAAS_HOME, so a script runs with nothing started beforehand."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from faas.endpoint import daemon
from faas.endpoint.config import default_config_text
from faas.endpoint.home import EndpointDir


class EmbeddedEndpoint:
    def __init__(self, workers: int = 2):
        self.home = Path(tempfile.mkdtemp(prefix="faas-embedded-"))
        self.epdir = EndpointDir.of("embedded", home=self.home)
        self.epdir.path.mkdir(parents=True, mode=0o700)
        self.epdir.config.write_text(default_config_text("embedded", workers=workers))
        try:
            daemon.start_background(self.epdir, exit_with=os.getpid())
        except BaseException:
            shutil.rmtree(self.home, ignore_errors=True)
            raise

    @property
    def address(self) -> str:
        return self.epdir.address

    def close(self) -> None:
        daemon.stop(self.epdir)
        shutil.rmtree(self.home, ignore_errors=True)

