"""The endpoint config's keys, read from its pydantic models: the documentation
site's config reference is generated from these (``docs/hooks.py``), so it
cannot drift from what :func:`faas.endpoint.config.load_config` accepts; a
test fails when a key has no description."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ByteSize
from pydantic_core import PydanticUndefined

from faas.endpoint.config import EndpointConfig


@dataclass
class Key:
    path: str  # dotted, e.g. engine.provider.type
    type: str
    default: str
    description: str | None
    section: bool  # a nested block of keys


def keys(model: type[BaseModel] = EndpointConfig, prefix: str = "") -> Iterator[Key]:
    """Every key of ``model`` and of the blocks nested in it, depth first."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _nested_model(field.annotation)
        yield Key(path, _type_text(field.annotation), "" if nested else _default_text(field),
                  field.description, nested is not None)
        if nested is not None:
            yield from keys(nested, f"{path}.")


def markdown() -> str:
    """The reference as Markdown: one table per block of keys, the top level first."""
    blocks: dict[str, list[Key]] = {"": []}
    about: dict[str, str] = {}
    for key in keys():
        if key.section:
            blocks.setdefault(key.path, [])
            about[key.path] = key.description or ""
        blocks[key.path.rpartition(".")[0]].append(key)
    out: list[str] = []
    for block, members in blocks.items():
        out += ["", f"### `{block}`" if block else "### Top level", ""]
        if block:
            out += [about[block], ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{k.path}` | {_cell(k.type)} | {_cell(k.default or 'see below')} | {_cell(k.description or '')} |"
                for k in members]
    return "\n".join(out).strip() + "\n"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type_text(annotation: Any) -> str:
    if annotation is ByteSize:
        return "bytes (`64MiB`, or a number)"
    if annotation is type(None):
        return "null"
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "block"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "null"
    if isinstance(value, ByteSize) and value % 2**20 == 0:
        return f"`{value >> 20}MiB`"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
