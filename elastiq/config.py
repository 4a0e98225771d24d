"""The job's training configuration, shared by controller (which owns it) and workers.

Torch-free on purpose: the controller validates and stores it, the agents receive
it as JSON and hand it to their workers. Every field is checked in __post_init__
so a bad value fails at submission with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """Shape of the built-in LLaMA-style decoder (byte-level vocabulary)."""

    dim: int = 64
    """Hidden size; must be divisible by n_heads."""
    n_layers: int = 4
    """Number of transformer blocks (the unit of pipeline stages)."""
    n_heads: int = 4
    """Attention heads per block."""
    vocab: int = 256
    """Vocabulary size; 256 for raw bytes."""
    mlp_ratio: float = 2.75
    """SwiGLU hidden size as a multiple of dim."""
    dropout: float = 0.0
    """Dropout probability; RNG is keyed by (seed, step, sample, layer), never rank."""

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.n_layers <= 0 or self.n_heads <= 0 or self.vocab <= 1:
            raise ValueError(f"model sizes must be positive (got {self})")
        if self.dim % self.n_heads != 0 or (self.dim // self.n_heads) % 2 != 0:
            raise ValueError(
                f"model.dim={self.dim} must be a multiple of 2*n_heads={2 * self.n_heads} "
                "(rotary embeddings need an even head size)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"model.mlp_ratio={self.mlp_ratio} must be positive")


@dataclass(kw_only=True, slots=True)
class JobConfig:
    """Everything that decides the training computation, independent of the layout."""

    job: str = "elastiq"
    """Job name; keys in the store live under it."""
    steps: int = 200
    """Optimizer steps to run."""
    global_batch: int = 32
    """Samples per optimizer step, kept through every membership change."""
    micro_batch: int = 4
    """Samples per micro-batch; global_batch must be a multiple of it."""
    seq_len: int = 64
    """Tokens per sample (bytes)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 10
    """Linear warm-up steps, then cosine decay to lr/10 at `steps`."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    data: str = ""
    """fsspec path, directory or glob of text files; empty: Python's standard library.
    With data_format uint16/uint32: one token file (any fsspec URL)."""
    data_format: str = "text"
    """"text": files read as bytes (token id = byte value); "uint16" or "uint32": a flat
    token file, as nanoGPT- and Megatron-style pipelines write them; "parquet": Parquet
    files of token-id rows (what Hugging Face datasets saves)."""
    data_column: str = "input_ids"
    """With data_format parquet: the list column that holds the token ids."""
    data_max_bytes: int = 4_000_000
    """Bytes of a text corpus read at most (files in sorted order)."""
    collective_timeout_s: float = 60.0
    """Timeout of every collective and point-to-point transfer."""
    rendezvous_timeout_s: float = 30.0
    """Timeout for building a generation's process group."""
    step_delay_s: float = 0.0
    """Artificial delay per step (demos and chaos timing on fast machines)."""
    pipeline_stages: int = 1
    """Pipeline stages to start with (1: data parallelism only)."""
    zero: int = 0
    """ZeRO stage: 0 replicated optimizer state, 1 moments split across a stage's
    data-parallel ranks, 2 gradients split too."""
    final_params: str = ""
    """fsspec URL where rank 0 writes the final parameters (torch.save of the flat
    fp32 buffer and its layout) when the job finishes; empty: not written."""
    step_log: str = ""
    """Local directory where each worker appends one JSON line per committed step
    (step, generation, rank, loss, step time, wall clock); empty: off."""
    checkpoint_url: str = ""
    """Durable checkpoint root (any fsspec URL); empty: no checkpoints."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: never, even with a URL)."""
    checkpoint_keep: int = 3
    """Committed checkpoints kept; older and abandoned partial ones are removed."""
    checkpoint_local_dir: str = ""
    """Node-local tier written first (fsync'ed), then uploaded to checkpoint_url."""
    resume: bool = False
    """Start from the newest committed checkpoint under checkpoint_url, at whatever
    worker count and layout this run has."""
    checkpoint_max_staleness: int = 0
    """A checkpoint more than this many steps behind the lost state is not fresh
    enough to restore from (0: any committed checkpoint will do)."""
    buddy_snapshots: bool = True
    """Copy each rank's state to a buddy every step (off: a lost stage needs a
    checkpoint or CheckFree)."""
    checkfree: bool = False
    """When a stage's state exists nowhere (no replica, buddy or fresh enough
    checkpoint), rebuild it from its neighbours (an approximation) instead of failing."""
    checkfree_lr_scale: float = 1.1
    """Learning-rate multiplier of CheckFree-rebuilt layers from then on."""
    checkfree_plus: bool = False
    """CheckFree+ (needs checkfree and 2+ stages): odd micro-batches run the first
    and the last stage's blocks swapped with their neighbours', and the neighbouring
    stages keep copies of the embedding and the head, so a lost first or last stage
    can be rebuilt too. Costs extra activation transfers on odd micro-batches."""
    idle_timeout_s: float = 900.0
    """A worker with no plan to act on (before its first, or after the last step)
    exits after this long."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Shape of the built-in decoder (used when model_entry is empty)."""
    model_entry: str = ""
    """The model's builder, `pkg.module:build` (elastiq/model_api.py); empty: the
    built-in decoder. Only workers import it."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Arguments passed to the builder (JSON values)."""

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if not self.job or not all(c.isalnum() or c in "-_." for c in self.job):
            raise ValueError(f"job={self.job!r}: use letters, digits, '-', '_' or '.'")
        if self.steps <= 0:
            raise ValueError(f"steps={self.steps} must be positive")
        if self.micro_batch <= 0 or self.global_batch <= 0:
            raise ValueError("global_batch and micro_batch must be positive")
        if self.global_batch % self.micro_batch != 0:
            raise ValueError(
                f"global_batch={self.global_batch} must be a multiple of "
                f"micro_batch={self.micro_batch}"
            )
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len} must be at least 2")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be positive; warmup_steps, weight_decay, grad_clip >= 0")
        if self.data_format not in ("text", "uint16", "uint32", "parquet"):
            raise ValueError(
                f"data_format={self.data_format!r}: use 'text' (bytes of text files), "
                "'uint16' or 'uint32' (a flat token file) or 'parquet' (token-id rows)"
            )
        if self.data_format != "text" and not self.data:
            raise ValueError(f"data_format={self.data_format!r} needs data= the dataset's URL")
        if self.data_max_bytes < (self.seq_len + 1) * self.global_batch:
            raise ValueError(
                f"data_max_bytes={self.data_max_bytes} is smaller than one global batch"
            )
        if self.collective_timeout_s <= 0 or self.rendezvous_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.step_delay_s < 0:
            raise ValueError("step_delay_s must be >= 0")
        if self.zero not in (0, 1, 2):
            raise ValueError(f"zero={self.zero} must be 0, 1 or 2")
        if self.pipeline_stages < 1 or (
            not self.model_entry and self.pipeline_stages > self.model.n_layers + 2
        ):
            raise ValueError(
                f"pipeline_stages={self.pipeline_stages} must be in 1..{self.model.n_layers + 2} "
                "(one per layer unit at most: embedding, blocks, head)"
            )
        if self.checkpoint_every < 0 or self.checkpoint_keep < 1:
            raise ValueError("checkpoint_every must be >= 0 and checkpoint_keep >= 1")
        if (self.checkpoint_every or self.resume) and not self.checkpoint_url:
            raise ValueError(
                "checkpoint_every/resume need checkpoint_url (a directory or fsspec URL)"
            )
        if self.checkpoint_max_staleness < 0 or self.checkfree_lr_scale <= 0:
            raise ValueError("checkpoint_max_staleness must be >= 0, checkfree_lr_scale > 0")
        if self.checkfree_plus and (not self.checkfree or self.pipeline_stages < 2):
            raise ValueError(
                "checkfree_plus rebuilds a lost first or last stage from the next one: it "
                f"needs checkfree on and pipeline_stages >= 2 (got checkfree={self.checkfree}, "
                f"pipeline_stages={self.pipeline_stages})"
            )
        if self.model_entry and not _ENTRY_POINT.match(self.model_entry):
            raise ValueError(
                f"model_entry={self.model_entry!r} is not of the form pkg.module:build"
            )
        try:
            json.dumps(self.model_args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model_args must be JSON values: {exc}") from None
        if self.idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s={self.idle_timeout_s} must be positive")

    def unit_numel(self) -> list[int]:
        """Parameters of each layer unit of the built-in decoder (embedding, blocks,
        head), without torch. An entry-point model's sizes are known only to a worker
        that built it (they reach the controller in its ready report)."""
        if self.model_entry:
            raise ValueError(
                f"the unit sizes of {self.model_entry} are known only to a worker that built it"
            )
        m = self.model
        hidden = int(m.dim * m.mlp_ratio)
        block = 2 * m.dim + 4 * m.dim * m.dim + 3 * m.dim * hidden
        return [m.vocab * m.dim] + [block] * m.n_layers + [m.dim + m.dim * m.vocab]

    @property
    def micro_batches(self) -> int:
        return self.global_batch // self.micro_batch

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown job config keys {unknown}; known keys: {sorted(known)}")
        model = raw.get("model", {})
        if isinstance(model, dict):
            mknown = {f.name for f in dataclasses.fields(ModelConfig)}
            bad = sorted(set(model) - mknown)
            if bad:
                raise ValueError(f"unknown model config keys {bad}; known: {sorted(mknown)}")
            raw = {**raw, "model": ModelConfig(**model)}
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> JobConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"job config is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("job config must be a JSON object")
        return cls.from_dict(raw)
