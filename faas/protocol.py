"""The wire format between clients and an endpoint.

A message is a ZeroMQ multipart message: one JSON header frame followed by
opaque binary frames (pickled functions, arguments, results). The endpoint
only parses the JSON header, checked here against a schema, and never
unpickles a frame, so garbage from a peer can at worst earn an error reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from faas.errors import ProtocolError

VERSION = 1

# message type -> required header fields and their types
_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    # client -> endpoint
    "ping": {},
    "status": {},
    "submit": {"group": str, "functions": list, "invocations": list},
    "watch": {"group": str},
    # endpoint -> client
    "pong": {},
    "ack": {"ids": list},
    "results": {"items": list},
    "tasks": {"group": str, "ids": list},
    "status_reply": {"status": dict},
    "error": {"message": str},
    # worker loop -> endpoint (see faas.warm_pool.loop)
    "ready": {"host": str, "pid": int, "contexts": dict},
    "done": {"batch": int, "report": dict},
    # endpoint -> worker loop
    "batch": {"batch": int, "functions": list, "items": list, "settings": dict},
    "hb": {},
    "retire": {},
}
_FUNCTION_FIELDS = {"id": str, "name": str, "context_key": str, "context": str, "retries": int}
_INVOCATION_FIELDS = {"id": str, "function": str}
MAX_ID_LEN = 64
MAX_RETRIES = 100


def encode(kind: str, frames: Sequence[bytes] = (), **header: Any) -> list[bytes]:
    header = dict(header, type=kind, v=VERSION)
    return [json.dumps(header, separators=(",", ":")).encode(), *frames]


def decode(frames: Sequence[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Parse and validate a message; raises ProtocolError on anything malformed."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = json.loads(bytes(frames[0]))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"header is not JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in _SCHEMA:
        raise ProtocolError(f"unknown message type {kind!r}")
    if header.get("v") != VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r} is not {VERSION}")
    _check_fields(header, _SCHEMA[kind], kind)
    body = [bytes(f) for f in frames[1:]]
    if kind == "submit":
        _check_submit(header, body)
    return header, body


def _check_fields(obj: Any, fields: dict[str, type | tuple[type, ...]], what: str) -> None:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected an object")
    for name, typ in fields.items():
        value = obj.get(name)
        if not isinstance(value, typ) or isinstance(value, bool) and typ is int:
            raise ProtocolError(f"{what}: field {name!r} missing or not {getattr(typ, '__name__', typ)}")
        if isinstance(value, str) and name in ("id", "function", "group", "context_key") \
                and not 0 < len(value) <= MAX_ID_LEN:
            raise ProtocolError(f"{what}: field {name!r} must be 1..{MAX_ID_LEN} characters")


def _check_submit(header: dict[str, Any], body: list[bytes]) -> None:
    """Frames after the header: one per function (in order), then one per invocation."""
    functions, invocations = header["functions"], header["invocations"]
    for f in functions:
        _check_fields(f, _FUNCTION_FIELDS, "submit.functions[]")
        if not 0 <= f["retries"] <= MAX_RETRIES:
            raise ProtocolError(f"submit.functions[]: retries must be 0..{MAX_RETRIES}")
    for inv in invocations:
        _check_fields(inv, _INVOCATION_FIELDS, "submit.invocations[]")
    if len(body) != len(functions) + len(invocations):
        raise ProtocolError(f"submit: {len(body)} data frames for {len(functions)} functions "
                            f"and {len(invocations)} invocations")
