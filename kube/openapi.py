"""Typed config dataclasses as Kubernetes sees them: OpenAPI v3 schemas and parsing.

Where it sits: the one bridge between the operator's typed views (kube/job_spec.py,
kube/job_status.py, and the training's own `elastiq.config.JobConfig`) and the
resource's YAML. The CRD's schema is generated from the classes, their defaults and
their field docstrings, so a field is declared once, in Python, and the API server,
`kubectl explain` and the operator all agree on it. Pure: no I/O, no Kubernetes client.

Conventions: Python names are snake_case, resource keys camelCase (`checkpoint_url` ->
`checkpointUrl`). A field's bounds come from `field(metadata={"minimum": 1})`, and
`metadata={"omit": (...)}` leaves fields of a nested class out of the resource; a field
with no default is required. `dict[str, Any]` is a free-form object (Kubernetes'
`x-kubernetes-preserve-unknown-fields`), for what Kubernetes itself types elsewhere
(container resources, an env var's valueFrom) or the model's own arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from elastiq.config_fields import field_docs

T = TypeVar("T")

#: keys of `field(metadata=...)` copied into the schema as they are
_SCHEMA_KEYS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "maxItems")


def camel(name: str) -> str:
    """`checkpoint_url` -> `checkpointUrl`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def schema_of(tp: Any, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The OpenAPI v3 (structural) schema of a type: a dataclass, a scalar, a list, a dict."""
    _, tp = _is_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _object_schema(tp, skip)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int64"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    origin = get_origin(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": schema_of(item)}
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise TypeError(f"only str-keyed dicts map to OpenAPI, not {tp}")
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": schema_of(value)}
    raise TypeError(f"no OpenAPI mapping for {tp!r}")


def _object_schema(cls: type, skip: frozenset[str]) -> dict[str, Any]:
    hints, docs = _hints(cls), field_docs(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        prop = schema_of(hints[f.name], skip=frozenset(f.metadata.get("omit", ())))
        if docs.get(f.name):
            prop["description"] = docs[f.name]
        for key in _SCHEMA_KEYS:
            if key in f.metadata:
                prop[key] = f.metadata[key]
        if f.default is not dataclasses.MISSING and _is_plain(f.default):
            prop["default"] = f.default
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(camel(f.name))
        properties[camel(f.name)] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema["description"] = " ".join(cls.__doc__.split())
    if required:
        schema["required"] = required
    return schema


def _is_plain(value: Any) -> bool:
    # A default only a scalar: an empty list or dict default would make the API server
    # write `[]`/`{}` into every object, and a nested dataclass default is its fields'.
    return isinstance(value, bool | int | float | str)


def parse(cls: type[T], data: Any, *, where: str = "spec", skip: frozenset[str] = frozenset()) -> T:
    """Build `cls` from a resource's camelCase dict; ValueError names the bad key.

    Unknown keys are refused (the API server prunes them, so one here means a client
    that bypassed the schema); the class's own `__post_init__` checks values.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, not {type(data).__name__}")
    hints = _hints(cls)
    by_key = {
        camel(f.name): f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and f.name not in skip
    }
    unknown = sorted(set(data) - set(by_key))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = by_key[key]
        omit = frozenset(f.metadata.get("omit", ()))
        kwargs[f.name] = _value(hints[f.name], value, f"{where}.{key}", omit)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field missing
        raise ValueError(f"{where}: {exc}") from exc


def _value(tp: Any, value: Any, where: str, omit: frozenset[str] = frozenset()) -> Any:
    optional, tp = _is_optional(tp)
    if value is None and optional:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return parse(tp, value, where=where, skip=omit)
    origin = get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be a whole number, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, not {value!r}")
        return value
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(map(str, get_args(tp)))
            raise ValueError(f"{where} must be one of {choices}, not {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, not {value!r}")
        (item,) = get_args(tp)
        return [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, not {value!r}")
        _, item = get_args(tp)
        if item is Any:
            return value
        return {str(k): _value(item, v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"no parser for {tp!r} at {where}")


def dump(obj: Any, *, skip: frozenset[str] = frozenset()) -> Any:
    """A dataclass as the camelCase dict `parse` reads back (every field, defaults too)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            camel(f.name): dump(getattr(obj, f.name), skip=frozenset(f.metadata.get("omit", ())))
            for f in dataclasses.fields(obj)
            if f.init and f.name not in skip
        }
    if isinstance(obj, list):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj
