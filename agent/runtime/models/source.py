"""Where a worker's layer units come from, and what the runtime needs to know of them.

Where it sits: `TrainState` (agent/runtime/trainer.py) asks `model_source(cfg)` for
fresh copies of the units of its stage, their sizes and the loss; the worker reports
the sizes to the controller (`ModelShape`), which plans with them.

Every model comes from an entry point (elastiq/model_api.py); an empty `model_entry` is
the built-in decoder's (`decoder.build`, each unit initialised from (seed, unit)). The
whole model is built once per process with torch's RNG seeded from the job's seed (so
every worker starts from the same weights, whatever its stage), then probed on one tiny
batch: every unit must accept the one before it, and the loss must give one value per
sample. Each state gets deep copies of its units, so two states (before and after a
re-split) never share parameters.

A model that fails to import, build or chain raises ValueError with the reason; the
worker reports it (`START_FAILED`) and the job fails at once.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from elastiq.agent.runtime.models import decoder
from elastiq.config import JobConfig
from elastiq.model_api import UnitModel, build_model, param_name, token_cross_entropy


@dataclass(frozen=True)
class ModelSource:
    unit_numel: tuple[int, ...]
    """Parameters of each layer unit."""
    boundary_shape: tuple[int, ...] | None
    """The shape (without the batch) every unit boundary carries, which pipeline
    transfers allocate; None when boundaries differ (the model cannot be pipelined)."""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_unit: Callable[[int], nn.Module]
    """A fresh module for a unit index."""
    param_names: tuple[dict[str, str], ...] | None
    """Per unit, {local parameter name: the model's own name} (None: u<i>.<local>)."""
    vocab: int | None
    """Token ids the model accepts (the logits' width under the default token loss);
    None when unknown (a custom loss), and then the data is not checked against it."""

    @property
    def num_units(self) -> int:
        return len(self.unit_numel)

    def param_name(self, unit: int, local: str) -> str:
        """The name a unit's parameter has in checkpoints: the model's own, if known."""
        return param_name(self.param_names, unit, local)


_sources: dict[str, ModelSource] = {}


def model_source(cfg: JobConfig) -> ModelSource:
    """The model of this job, built at most once per process."""
    key = json.dumps(
        [cfg.model_entry, cfg.model_args, cfg.seed, cfg.seq_len, cfg.to_json()], sort_keys=True
    )
    source = _sources.get(key)
    if source is None:
        source = _builtin(cfg) if not cfg.model_entry else _from_entry_point(cfg)
        _sources[key] = source
    return source


def _builtin(cfg: JobConfig) -> ModelSource:
    """The built-in decoder, through its entry point like any model."""
    args = decoder.entry_args(cfg.model, cfg.seq_len, cfg.seed)
    source = _from_entry_point(cfg, decoder.ENTRY_POINT, args)
    if list(source.unit_numel) != cfg.unit_numel():
        raise RuntimeError("the built-in decoder's analytic unit sizes disagree with the model")
    return source


def _from_entry_point(
    cfg: JobConfig, entry: str | None = None, args: dict[str, Any] | None = None
) -> ModelSource:
    entry = entry or cfg.model_entry
    model = build_model(entry, cfg.model_args if args is None else args, cfg.seed)
    pristine = list(model.units)
    shapes = _probe(cfg, model, entry)
    boundaries = set(shapes[:-1])
    return ModelSource(
        unit_numel=tuple(sum(p.numel() for p in u.parameters()) for u in pristine),
        boundary_shape=next(iter(boundaries)) if len(boundaries) == 1 else None,
        loss=model.loss,
        make_unit=lambda unit: copy.deepcopy(pristine[unit]),
        param_names=tuple(dict(n) for n in model.param_names) if model.param_names else None,
        vocab=shapes[-1][-1] if model.loss is token_cross_entropy and shapes[-1] else None,
    )


def _probe(cfg: JobConfig, model: UnitModel, entry: str) -> list[tuple[int, ...]]:
    """Run one sample through every unit and the loss; the output shape of each unit."""
    for u, unit in enumerate(model.units):
        for name, p in unit.named_parameters():
            if p.dtype != torch.float32:
                raise ValueError(
                    f"{entry}: unit {u} parameter {name} is {p.dtype}; elastiq keeps float32 "
                    "master weights (cast the model with .float())"
                )
    h: torch.Tensor = torch.zeros(1, cfg.seq_len, dtype=torch.long)
    shapes = []
    with torch.no_grad():
        for u, unit in enumerate(model.units):
            try:
                out = unit(h)
            except Exception as exc:
                raise ValueError(
                    f"{entry}: unit {u} ({type(unit).__name__}) fails on "
                    f"{'token ids' if u == 0 else f'unit {u - 1} output'} of shape "
                    f"{tuple(h.shape)}: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(out, torch.Tensor):
                raise ValueError(
                    f"{entry}: unit {u} ({type(unit).__name__}) returned a "
                    f"{type(out).__name__}; each unit must return one tensor"
                )
            h = out
            shapes.append(tuple(h.shape[1:]))
        targets = torch.zeros(1, cfg.seq_len, dtype=torch.long)
        try:
            loss = model.loss(h, targets)
        except Exception as exc:
            raise ValueError(
                f"{entry}: the loss fails on the last unit's output of shape {tuple(h.shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (1,):
        shown = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"{entry}: the loss must return one value per sample (shape [batch]); for a "
            f"batch of 1 it returned {shown}"
        )
    return shapes
