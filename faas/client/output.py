"""What a function wrote on its worker, printed in the client as its result
arrives (as Ray prints its workers' output in the driver): each line prefixed
with the worker that ran it, stdout to stdout, stderr (and log records) to
stderr. ``Executor(forward_output=False)`` turns it off."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def forward(worker: str | None, output: Sequence[tuple[str, str]]) -> None:
    """Print ``output`` (``(stream, text)`` in order). A stream that cannot be
    written (closed, a broken pipe) is skipped: it must not stop the results."""
    prefix = f"(worker {worker or '?'}) "
    for stream, text in output:
        target = sys.stdout if stream == "stdout" else sys.stderr
        try:
            target.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))
            target.flush()
        except (OSError, ValueError, AttributeError):  # closed, broken pipe, or set to None
            pass
