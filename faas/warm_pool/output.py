"""What one invocation writes, captured on the worker so that it travels with
its outcome to the store and the client (as Ray and Modal show their workers'
output in the caller).

During a call, ``sys.stdout`` and ``sys.stderr`` write into the invocation's
capture, and the root logger hands it the records at or above a level (as
``LEVEL:name:message`` lines on stderr). Invocations run one at a time on the
worker's main thread, so one capture is live at a time: the capturing streams
and handler are made once per process and pointed at each invocation's
output (a few microseconds per invocation); threads the code starts write into
it too while it runs. Records from faas' own threads (named
``faas-...``) are not the invocation's. Output written below Python (a C
library writing to file descriptor 1) is not captured.

Bounded: the last ``OUTPUT_BYTES`` are kept, after a note of how much was cut.
"""

from __future__ import annotations

import functools
import io
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

OUTPUT_BYTES = 64 * 2**10  # kept per invocation: the last ones
_FORMAT = logging.Formatter(logging.BASIC_FORMAT)


class Output:
    """What was written, as (stream, bytes) chunks, within ``limit`` bytes (the latest kept)."""

    def __init__(self, limit: int = OUTPUT_BYTES):
        self.limit = limit
        self.cut = 0
        self._size = 0
        self._chunks: deque[list] = deque()  # [stream, bytes]
        self._lock = threading.Lock()  # threads of the user's code write too

    def add(self, stream: str, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self._chunks and self._chunks[-1][0] == stream:
                self._chunks[-1][1] += data
            else:
                self._chunks.append([stream, bytearray(data)])
            self._size += len(data)
            while self._size > self.limit:
                over, first = self._size - self.limit, self._chunks[0][1]
                if len(first) <= over:
                    self._chunks.popleft()
                    self._size -= len(first)
                    self.cut += len(first)
                else:
                    del first[:over]
                    self._size -= over
                    self.cut += over

    def chunks(self) -> list[tuple[str, str]]:
        """The protocol's form (:data:`faas.protocol.Output`), with a note first when some was cut."""
        with self._lock:
            out = [(stream, bytes(data).decode(errors="replace")) for stream, data in self._chunks]
        if self.cut:
            out.insert(0, ("stderr", f"[faas: {self.cut} bytes of this invocation's output were cut; "
                                     f"the last {self.limit} follow]\n"))
        return out


class _Sink(io.RawIOBase):
    """The bytes under a capturing ``sys.stdout``/``sys.stderr`` (so ``.buffer`` writes are captured too);
    with no capture live, they go on to the real stream."""

    def __init__(self, stream: str):
        self.stream = stream
        self.output: Output | None = None
        self.real = None  # the stream it stands in for

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.output is not None:
            self.output.add(self.stream, bytes(data))
        elif self.real is not None:  # a reference kept past its invocation (a handler made during it)
            self.real.write(bytes(data).decode(errors="replace"))
        return len(data)


class _Stream(io.TextIOWrapper):
    def __init__(self, stream: str):
        super().__init__(_Sink(stream), encoding="utf-8", errors="backslashreplace", write_through=True)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.output: Output | None = None
        self.setFormatter(_FORMAT)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.output is not None and not record.threadName.startswith("faas-") and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.add("stderr", (self.format(record) + "\n").encode(errors="backslashreplace"))
        except Exception:  # as logging does: a record that cannot be formatted is reported, not raised
            self.handleError(record)


@functools.cache
def _capturing() -> tuple[_Stream, _Stream, _Records]:
    """Made once per process: a capture only points them at its Output (invocations run one at a time)."""
    return _Stream("stdout"), _Stream("stderr"), _Records()


@contextmanager
def captured(level: int = logging.WARNING, limit: int = OUTPUT_BYTES) -> Iterator[Output]:
    """Capture what the code in the block writes and logs at or above ``level``
    (one capture at a time: invocations run one at a time)."""
    output = Output(limit)
    out, err, records = _capturing()
    root = logging.getLogger()
    stdout, stderr, root_level = _underneath(sys.stdout), _underneath(sys.stderr), root.level
    out.buffer.real, err.buffer.real = stdout, stderr
    out.buffer.output = err.buffer.output = records.output = output
    records.setLevel(level)
    sys.stdout, sys.stderr = out, err
    root.addHandler(records)
    lowered = root.level > level  # else records below the root's level would never reach the handler
    if lowered:
        root.setLevel(level)
    try:
        yield output
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        out.buffer.output = err.buffer.output = records.output = None
        root.removeHandler(records)
        if lowered:
            root.setLevel(root_level)


def _underneath(stream):
    """The real stream: a capture left in place (an interrupt between the restores) is looked through."""
    return stream.buffer.real if isinstance(stream, _Stream) else stream
