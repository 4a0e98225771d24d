"""Command-line flags generated from the config dataclasses: one source for every
default and help text.

Where it sits: `elastiq.cli.main` builds its parsers with `add_flags` and turns the
parsed namespace back into validated configs with `config_from`. A field's flag is
its name with dashes (`global_batch` -> `--global-batch`), a trailing `_s` (seconds)
dropped (`step_delay_s` -> `--step-delay`); a boolean that defaults to True becomes
`--no-NAME`. The help text is the field's docstring, read from the class's source
(the attribute docstrings the configs already carry), with the default appended.
Fields a command sets another way (a secret, a list with its own syntax) are skipped
by name. A field with an environment variable (`env`) gets no default in the parser:
`config_from` applies explicit flag > environment > the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from elastiq import envvars
from elastiq.config_fields import field_docs, flag_name

C = TypeVar("C")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Collection[str] = (),
    rename: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    nested_prefix: str = "",
) -> None:
    """Add a flag per field of dataclass `cls` (nested dataclasses get their fields
    as flags too, named `--<field>-<subfield>` unless `rename` names them; `rename`
    and `skip` use dotted paths for nested fields, e.g. "model.dim")."""
    rename = rename or {}
    env = env or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        path = nested_prefix + f.name
        if path in skip:
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            add_flags(parser, kind, skip=skip, rename=rename, env=env, nested_prefix=path + ".")
            continue
        default = _default(f)
        name = rename.get(path) or flag_name(path.replace(".", "_"))
        doc = docs.get(f.name, "")
        dest = path.replace(".", "__")
        if kind is bool:
            if default:
                name = rename.get(path) or "--no-" + flag_name(path.replace(".", "_"))[2:]
                parser.add_argument(name, dest=dest, action="store_false", help=doc)
            else:
                parser.add_argument(name, dest=dest, action="store_true", help=doc)
            continue
        if kind not in (int, float, str):
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {kind!r}; skip it")
        shown = f" (default: {default!r})" if default not in ("", None) else ""
        if path in env:
            shown = f" (default: ${env[path]}, else {default!r})"
            default = None
        metavar = "SECONDS" if f.name.endswith("_s") else name[2:].upper().replace("-", "_")
        parser.add_argument(
            name,
            dest=dest,
            type=kind,
            default=default,
            metavar=metavar,
            help=(doc + shown).strip() or None,
        )


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default: it cannot be an optional flag")


def config_from(
    cls: type[C],
    args: argparse.Namespace,
    *,
    skip: Collection[str] = (),
    env: Mapping[str, str] | None = None,
    nested_prefix: str = "",
    **given: Any,
) -> C:
    """The dataclass `cls` from the parsed flags that `add_flags` added, plus `given`
    (the fields set another way). Validation is the dataclass's own."""
    env = env or {}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = nested_prefix + f.name
        if f.name in given or path in skip:
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[f.name] = config_from(
                kind,
                args,
                skip=skip,
                env=env,
                nested_prefix=path + ".",
            )
            continue
        value = getattr(args, path.replace(".", "__"))
        if path in env:
            value = envvars.resolve(value, env[path], _default(f), kind)
        values[f.name] = value
    return cls(**values, **given)


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` pairs: VALUE as JSON where it parses, else a string."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--model-arg {pair!r}: expected KEY=VALUE")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --model-arg and the batch shape, for tools that run a job of their own
    (the benchmarks): the same job with the user's model instead of the built-in one."""
    g = parser.add_argument_group("model (default: the built-in decoder)")
    g.add_argument("--model", default="", help="builder entry point, e.g. elastiq.hf:build")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--global-batch", type=int, default=32)
    g.add_argument("--micro-batch", type=int, default=4)
    g.add_argument("--seq-len", type=int, default=64)


def job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """JobConfig fields that `add_model_args` flags set."""
    overrides: dict[str, Any] = {
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
    }
    if args.model:
        overrides["model_entry"] = args.model
        overrides["model_args"] = parse_model_args(args.model_arg)
    return overrides
