"""The public model API: what a job's model entry point returns.

A model is an ordered list of layer units (`torch.nn.Module`s); unit i consumes unit
i-1's output, unit 0 the token ids [batch, seq_len]. Units are the grain of pipeline
stages, rebalancing and CheckFree. The loss maps the last unit's output and the target
ids to one value per sample; the runtime divides by the global batch, so the
computation does not depend on the layout. A plain `nn.Module` is one unit (data
parallelism and ZeRO only).

The job names the builder by entry point, `pkg.module:build`; `build(args)` gets the
job's `model_args` (a dict of JSON values) and returns a `UnitModel` or an `nn.Module`.
It is called with torch's RNG seeded from the job's seed, so every worker builds the
same initial weights. Only workers import it, never the controller or the agents.

Example:

    def build(args):
        dim = int(args.get("dim", 64))
        return elastiq.UnitModel(units=[Embed(dim), *[Block(dim) for _ in range(4)], Head(dim)])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def token_cross_entropy(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean token cross-entropy: output [b, t, vocab], targets [b, t] -> [b]."""
    per_token = F.cross_entropy(
        output.reshape(-1, output.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return per_token.view(targets.shape[0], -1).mean(dim=1)


@dataclass(kw_only=True)
class UnitModel:
    """A model as elastiq trains it."""

    units: Sequence[nn.Module]
    """Layer units in order; unit i consumes unit i-1's output (a tensor)."""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default=token_cross_entropy)
    """(last unit's output, target ids [b, t]) -> one loss per sample, shape [b]."""
    param_names: Sequence[Mapping[str, str]] | None = None
    """Per unit, its parameters' names in the model's own state dict ({unit-local name:
    model name}); checkpoints store them under these. None: `u<index>.<local name>`."""


def names_in(root: nn.Module, units: Sequence[nn.Module]) -> list[dict[str, str]]:
    """`param_names` for units that are (wrappers of) submodules of `root`: each unit
    parameter named as `root.named_parameters()` names the same tensor."""
    owner = {id(p): name for name, p in root.named_parameters()}
    return [
        {local: owner.get(id(p), local) for local, p in unit.named_parameters()} for unit in units
    ]


def param_name(param_names: Sequence[Mapping[str, str]] | None, unit: int, local: str) -> str:
    """The name a unit's parameter has in checkpoints: the model's own where
    `param_names` gives it, else `u<unit>.<local name>`."""
    fallback = f"u{unit}.{local}"
    return param_names[unit].get(local, fallback) if param_names is not None else fallback


def model_param_names(model: UnitModel) -> list[str]:
    """Every parameter's name, in unit order: the order `model.parameters()` of the
    whole model gives them, in the model's own names where it has them."""
    return [
        param_name(model.param_names, u, local)
        for u, unit in enumerate(model.units)
        for local, _ in unit.named_parameters()
    ]


def load_builder(entry: str) -> Callable[..., Any]:
    """The callable an entry point `pkg.module:attr` names; ValueError saying what failed."""
    module_name, colon, attr = entry.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"model entry point {entry!r} is not of the form pkg.module:build")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import runs user code: any failure is a bad entry point
        raise ValueError(
            f"model entry point {entry!r}: cannot import {module_name!r} "
            f"({type(exc).__name__}: {exc}); is it installed on every worker?"
        ) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(
                f"model entry point {entry!r}: {module_name!r} has no {attr!r}"
            ) from None
    if not callable(target):
        raise ValueError(f"model entry point {entry!r} is a {type(target).__name__}, not callable")
    builder: Callable[..., Any] = target
    return builder


def build_model(entry: str, args: Mapping[str, Any], seed: int) -> UnitModel:
    """Import and call the builder with torch's RNG seeded by `seed`; ValueError if it
    fails or returns something that is not a model."""
    builder = load_builder(entry)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            built = builder(dict(args))
        except Exception as exc:
            raise ValueError(
                f"model entry point {entry!r} failed with {type(exc).__name__}: {exc}"
            ) from exc
    if isinstance(built, nn.Module):
        return UnitModel(units=[built])
    if not isinstance(built, UnitModel):
        raise ValueError(
            f"model entry point {entry!r} returned a {type(built).__name__}; return an "
            "elastiq.UnitModel (a list of layer units and a per-sample loss) or a "
            "torch.nn.Module"
        )
    units = list(built.units)
    if not units or not all(isinstance(u, nn.Module) for u in units):
        raise ValueError(
            f"model entry point {entry!r}: units must be a non-empty list of nn.Module"
        )
    names = built.param_names
    if names is not None and len(names) != len(units):
        raise ValueError(
            f"model entry point {entry!r}: {len(names)} param_names for {len(units)} units"
        )
    return UnitModel(units=units, loss=built.loss, param_names=names)
