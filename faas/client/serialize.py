"""Client-side serialisation: functions and arguments go by value (cloudpickle),
so code defined in ``__main__``, a notebook or a script's own module runs on
workers that never saw it."""

from __future__ import annotations

import functools
import hashlib
import sys
import sysconfig
from pathlib import Path
from typing import Any

import cloudpickle

from faas.errors import InvocationFailed, PayloadTooLarge, RemoteTraceback, SerializationError
from faas.function import Chunk, CtxFunction

_INSTALLED = {Path(p).resolve() for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                          sysconfig.get_paths()["stdlib"])}


def function_blob(fn: CtxFunction) -> tuple[str, bytes]:
    """(id, pickled function). The id is the content hash, so resends dedupe."""
    _by_value_if_local(fn.fn)
    if fn.spec is not None:
        _by_value_if_local(fn.spec.loader)
    fn.keep_source()
    try:
        blob = cloudpickle.dumps(fn)
    except Exception as e:
        raise SerializationError(f"function {fn.__qualname__} cannot be serialised: {e}") from e
    return hashlib.sha256(blob).hexdigest()[:32], blob


def _by_value_if_local(obj: Any) -> None:
    """Ship the module of a user's function by value unless it is installed
    (workers can import installed packages, not the user's scripts)."""
    if isinstance(obj, functools.partial | Chunk):
        inner = obj.func if isinstance(obj, functools.partial) else obj.fn
        for part in (inner, *obj.args, *obj.keywords.values()):
            if callable(part):
                _by_value_if_local(part)
        return
    name = getattr(obj, "__module__", None)
    module = sys.modules.get(name or "")
    path = getattr(module, "__file__", None)
    if module is None or name == "__main__" or path is None or name.split(".")[0] == "faas":
        return
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(p) for p in _INSTALLED):
        cloudpickle.register_pickle_by_value(module)


def args_blob(args: tuple, kwargs: dict, limit: int | None) -> bytes:
    try:
        blob = cloudpickle.dumps((args, kwargs))
    except Exception as e:
        raise SerializationError(f"arguments cannot be serialised: {type(e).__name__}: {e}") from e
    if limit is not None and len(blob) > limit:
        raise PayloadTooLarge(f"arguments are {len(blob)} bytes, over the limit of {limit} bytes")
    return blob


def load_result(payload: bytes) -> Any:
    return cloudpickle.loads(payload)


def unloadable(payload: bytes, error: Exception) -> SerializationError:
    """Why a result that arrived cannot be used here (e.g. its class's module is not installed)."""
    exc = SerializationError(f"the result ({len(payload)} bytes) could not be unpickled here: "
                             f"{type(error).__name__}: {error}")
    exc.__cause__ = error
    return exc


def remote_exception(payload: bytes, tb: str | None) -> BaseException:
    """The remote exception, with the remote traceback text as its cause."""
    try:
        exc = cloudpickle.loads(payload) if payload else InvocationFailed(tb or "invocation failed")
    except Exception as e:  # e.g. the exception's class is not importable here
        exc = InvocationFailed(f"remote exception could not be loaded ({e}); remote traceback:\n{tb}")
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc
