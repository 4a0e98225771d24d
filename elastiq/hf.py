"""Hugging Face decoder-only causal LMs, unmodified, as elastiq layer units.

Entry point: `--model elastiq.hf:build --model-arg family=llama --model-arg
'config={"hidden_size": 512, ...}'`. `build` makes the model from a config with random
weights (`AutoModelForCausalLM.from_config`; nothing is downloaded) and splits it along
the library's own modules: the embedding, each decoder layer, and the final norm with
the LM head. Each layer unit computes what the model's forward would hand it: position
ids, the causal mask (`transformers.masking_utils.create_causal_mask`), and for rotary
families the position embeddings (`rotary_emb`). Two shapes of base model are known:

- Llama-style (`embed_tokens`, `layers`, `norm`, `rotary_emb`): Llama, Mistral, Qwen2
  and the other families built the same way;
- GPT-2-style (`wte`, `wpe`, `h`, `ln_f`).

Training under elastiq needs every unit to own its parameters and the computation to
be the same under any layout, so the config is adjusted: input and output embeddings
are untied, dropout is 0 (its RNG would follow the layout), and attention is `sdpa`.
Requires `pip install elastiq[hf]`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from elastiq.model_api import UnitModel, names_in

#: config fields forced for training under elastiq (see the module docstring)
_FORCED = {
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "use_cache": False,
}


def build(args: Mapping[str, Any]) -> UnitModel:
    """`args`: `family` (a transformers model type: "llama", "gpt2", ...) and `config`
    (keyword arguments of that family's config class)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config_of(args), attn_implementation="sdpa")
    return split_causal_lm(model)


def config_of(args: Mapping[str, Any]) -> Any:
    """The transformers config `build` trains with (see the module docstring)."""
    from transformers import AutoConfig

    family = args.get("family")
    if not isinstance(family, str):
        raise ValueError("elastiq.hf:build needs family=<transformers model type, e.g. llama>")
    overrides = args.get("config", {})
    if not isinstance(overrides, dict):
        raise ValueError("elastiq.hf:build: config must be a JSON object of config fields")
    config = AutoConfig.for_model(family, **overrides)
    for name, value in _FORCED.items():
        if hasattr(config, name):
            setattr(config, name, value)
    return config


def split_causal_lm(model: nn.Module) -> UnitModel:
    """The units of a decoder-only causal LM (embedding, each decoder layer, norm + head)."""
    base = getattr(model, "base_model", None)
    head = getattr(model, "lm_head", None)
    config = getattr(model, "config", None)
    if base is None or head is None or config is None:
        raise ValueError(f"{type(model).__name__} is not a causal LM with a base model and lm_head")
    if all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm")):
        rotary = getattr(base, "rotary_emb", None)
        units: list[nn.Module] = [_TokenEmbedding(base.embed_tokens, None)]
        units += [_DecoderLayer(layer, config, rotary, "llama") for layer in base.layers]
        units.append(_Head(base.norm, head))
    elif all(hasattr(base, a) for a in ("wte", "wpe", "h", "ln_f")):
        units = [_TokenEmbedding(base.wte, base.wpe)]
        units += [_DecoderLayer(layer, config, None, "gpt2") for layer in base.h]
        units.append(_Head(base.ln_f, head))
    else:
        raise ValueError(
            f"{type(model).__name__}: its base model has neither embed_tokens/layers/norm "
            "(Llama-style) nor wte/wpe/h/ln_f (GPT-2-style); split it into units yourself "
            "(elastiq.UnitModel)"
        )
    return UnitModel(units=units, param_names=names_in(model, units))


class _TokenEmbedding(nn.Module):
    def __init__(self, tokens: nn.Module, positions: nn.Module | None) -> None:
        super().__init__()
        self.tokens = tokens
        self.positions = positions

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.tokens(ids)
        if self.positions is not None:
            h = h + self.positions(_position_ids(h))
        return h


class _DecoderLayer(nn.Module):
    """One decoder layer, handed what the model's forward would hand it."""

    def __init__(self, layer: nn.Module, config: Any, rotary: nn.Module | None, style: str) -> None:
        super().__init__()
        self.layer = layer
        # buffers only (inverse frequencies): a copy per unit keeps units independent
        self.rotary = copy.deepcopy(rotary) if rotary is not None else None
        self.config = config
        self.style = style

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        positions = _position_ids(h)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=h,
            attention_mask=None,
            cache=None,
            position_ids=positions,
        )
        if self.style == "gpt2":
            out = self.layer(h, None, mask, use_cache=False, position_ids=positions)
        else:
            embeddings = self.rotary(h, position_ids=positions) if self.rotary is not None else None
            out = self.layer(
                h,
                attention_mask=mask,
                position_embeddings=embeddings,
                position_ids=positions,
                cache=None,
                use_cache=False,
            )
        result: torch.Tensor = out[0] if isinstance(out, tuple) else out
        return result


class _Head(nn.Module):
    def __init__(self, norm: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.head = head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.norm(h))
        return out


def _position_ids(h: torch.Tensor) -> torch.Tensor:
    return torch.arange(h.shape[1], device=h.device).unsqueeze(0)
