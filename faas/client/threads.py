"""The client's background threads never die silently: what one raises becomes
a :class:`~faas.errors.ClientError` handed to its owner, which fails its open
futures with it and refuses new work (a dead thread would leave them waiting)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from faas.errors import ClientError

log = logging.getLogger(__name__)


def guarded(where: str, body: Callable[[], None], on_fatal: Callable[[ClientError], None]) -> Callable[[], None]:
    """A thread target that runs ``body`` and, whatever it raises, calls ``on_fatal``
    with a ClientError naming ``where`` and carrying the cause and its traceback."""

    def run() -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - anything: the owner must hear of it
            error = ClientError.of(where, e)
            log.error("%s\n%s", error, error.traceback)
            try:
                on_fatal(error)
            except BaseException:  # noqa: BLE001 - the thread ends either way; say so
                log.exception("failing the futures after %s failed", where)

    return run
