"""Offline tools on checkpoints: verify one, import a PyTorch DCP checkpoint or a
plain state-dict file into the universal format, export consolidated safetensors.

Sits on top of the engine (imports are written through it, so they commit like any
checkpoint) and the reader (exports and verification read through the same
verified range reads as a restore). `progress(done, total)` is called as tensors
complete so a CLI can draw a bar.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from elastiq import fs
from elastiq.checkpoint import catalog
from elastiq.checkpoint.engine import CheckpointConfig, CheckpointEngine, Piece
from elastiq.checkpoint.manifest import ManifestError, parse_step_dir
from elastiq.checkpoint.restore import (
    CheckpointReader,
    CorruptCheckpoint,
    NoCheckpoint,
    Request,
    check_restored,
)
from elastiq.checkpoint.tensorfile import TORCH_DTYPES, as_bytes, dtype_name, layout

Progress = Callable[[int, int], None]
#: elements verified or exported per read (32 MiB of float32)
_VERIFY_ELEMENTS = 8 << 20


def _quiet(done: int, total: int) -> None:
    return None


def locate(url: str) -> tuple[str, int]:
    """(root, step) for a checkpoint directory URL, or a root's newest committed one."""
    base = url.rstrip("/")
    step = parse_step_dir(base.rsplit("/", 1)[-1])
    if step is not None:
        return base.rsplit("/", 1)[0], step
    steps = catalog.committed(base)
    if not steps:
        raise NoCheckpoint(f"no committed checkpoint under {url!r}")
    return base, steps[-1]


@dataclass(slots=True)
class Verdict:
    step: int
    tensors: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)


def verify(url: str, progress: Progress = _quiet) -> Verdict:
    """Read every byte of a checkpoint against its checksums and check the restored
    state agrees with itself; each problem names the tensor."""
    root, step = locate(url)
    reader = CheckpointReader(root, step)
    verdict = Verdict(step)
    verdict.problems.extend(reader.file_header_problems())
    names = sorted(reader.manifest.tensors)
    for i, name in enumerate(names):
        meta = reader.manifest.tensors[name]
        try:
            # in bounded pieces: memory stays flat whatever sizes a manifest claims
            for lo in range(0, meta.numel, _VERIFY_ELEMENTS):
                hi = min(meta.numel, lo + _VERIFY_ELEMENTS)
                req = Request(name, lo, hi, torch.empty(hi - lo, dtype=TORCH_DTYPES[meta.dtype]))
                reader.read([req])
                check_restored(reader.manifest, [req] if lo == 0 else [])
        except (CorruptCheckpoint, ManifestError) as exc:
            verdict.problems.append(str(exc))
        verdict.tensors += 1
        progress(i + 1, len(names))
    verdict.bytes_read = reader.bytes_read
    return verdict


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}/{i}" if prefix else str(i))


def import_state_dict(
    state: dict[str, Any], url: str, step: int = 0, source: str = "", progress: Progress = _quiet
) -> int:
    """Write a (possibly nested) state dict as a committed one-part universal
    checkpoint of `step`; a flat dict of tensors is taken as the model's. Returns bytes."""
    flat = list(_flatten(state))
    if not flat:
        raise ValueError(f"{source or 'the state dict'} holds no tensors")
    nested = any(isinstance(v, dict) for v in state.values())
    pieces = []
    for name, tensor in flat:
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        dtype_name(t.dtype)  # refuses dtypes the format cannot hold, before writing
        full = name if nested else f"model/{name}"
        pieces.append(Piece(name=full, shape=tuple(tensor.shape), lo=0, hi=t.numel(), data=t))
    pieces = [p for p in pieces if p.hi > 0]
    engine = CheckpointEngine(CheckpointConfig(url=url))
    engine.save(step, pieces, rank=0, parts=1, extra={"step": step, "imported_from": source})
    engine.flush()
    engine.close()
    if engine.stats.committed_step != step:
        raise RuntimeError(f"import into {url} did not commit: {engine.stats.errors}")
    progress(len(pieces), len(pieces))
    return engine.stats.bytes_persisted


def import_training_run(
    path: str, url: str, step: int, param_names: Sequence[str], progress: Progress = _quiet
) -> int:
    """A plain PyTorch loop's `torch.save({"model": model.state_dict(), "optim":
    optimizer.state_dict()})` (AdamW; loaded with weights_only=True) as a committed
    checkpoint of `step` that `--resume` continues at any layout. The optimizer's state
    is keyed by parameter index; `param_names` names them in the order the optimizer was
    given the parameters (`model.parameters()`), in the model's own names. ValueError,
    writing nothing, if the run does not fit (other names, another step count)."""
    with fs.open_read(path) as f:
        run = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(run, dict) or not {"model", "optim"} <= set(run):
        raise ValueError(f"{path}: expected a dict with 'model' and 'optim' state dicts")
    model, optim = run["model"], run["optim"]
    indices = [i for group in optim.get("param_groups", []) for i in group["params"]]
    if len(indices) != len(param_names):
        raise ValueError(
            f"{path}: the optimizer holds {len(indices)} parameters, the model "
            f"{len(param_names)}: was it built with model.parameters()?"
        )
    missing = [n for n in param_names if n not in model]
    if missing:
        raise ValueError(f"{path}: the model state dict lacks {missing[:3]} (other names?)")
    pieces = []
    for index, name in zip(indices, param_names, strict=True):
        moments = optim["state"].get(index)
        if moments is None or "exp_avg" not in moments:
            raise ValueError(f"{path}: no AdamW moments for parameter {index} ({name})")
        taken = int(moments["step"])
        if taken != step:
            raise ValueError(f"{path}: {name} has taken {taken} optimizer steps, not {step}")
        for prefix, tensor in (
            ("model/", model[name]),
            ("optim/exp_avg/", moments["exp_avg"]),
            ("optim/exp_avg_sq/", moments["exp_avg_sq"]),
        ):
            t = tensor.detach().to("cpu", torch.float32).contiguous().reshape(-1)
            shape = tuple(model[name].shape)
            pieces.append(Piece(name=prefix + name, shape=shape, lo=0, hi=t.numel(), data=t))
    engine = CheckpointEngine(CheckpointConfig(url=url))
    engine.save(step, pieces, rank=0, parts=1, extra={"step": step, "imported_from": path})
    engine.flush()
    engine.close()
    if engine.stats.committed_step != step:
        raise RuntimeError(f"import into {url} did not commit: {engine.stats.errors}")
    progress(len(pieces), len(pieces))
    return engine.stats.bytes_persisted


def import_torch_file(path: str, url: str, step: int = 0, progress: Progress = _quiet) -> int:
    """A `torch.save`d state dict (tensors only: loaded with weights_only=True)."""
    with fs.open_read(path) as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return import_state_dict(state, url, step, source=path, progress=progress)


def import_dcp(path: str, url: str, step: int = 0, progress: Progress = _quiet) -> int:
    """A PyTorch distributed checkpoint directory (the `.metadata` + `.distcp` files),
    read by checkpoint/dcp_reader.py, which never executes anything from the files."""
    from elastiq.checkpoint.dcp_reader import METADATA, load_dcp

    local = fs.local_path(path)
    if local is None or not os.path.exists(os.path.join(local, METADATA)):
        raise ValueError(f"{path} is not a local DCP checkpoint directory (no {METADATA})")
    state = load_dcp(local)
    return import_state_dict(state, url, step, source=path, progress=progress)


def export_safetensors(
    url: str, out_url: str, prefix: str = "model/", progress: Progress = _quiet
) -> int:
    """Consolidate the tensors named `prefix...` (default: the model's parameters)
    into one safetensors file with full shapes; returns bytes written."""
    root, step = locate(url)
    reader = CheckpointReader(root, step)
    names = sorted(n for n in reader.manifest.tensors if n.startswith(prefix))
    if not names:
        raise ValueError(f"the checkpoint holds no tensor named {prefix}*")
    metas = [reader.manifest.tensors[n] for n in names]
    header, _ = layout(
        [(n[len(prefix) :], m.dtype, m.shape) for n, m in zip(names, metas, strict=True)],
        {"format": "pt", "step": str(step)},
    )

    def chunks() -> Iterator[bytes | memoryview]:
        yield header
        for i, (name, meta) in enumerate(zip(names, metas, strict=True)):
            for lo in range(0, meta.numel, _VERIFY_ELEMENTS):  # flat memory, as in verify
                hi = min(meta.numel, lo + _VERIFY_ELEMENTS)
                out = torch.empty(hi - lo, dtype=TORCH_DTYPES[meta.dtype])
                reader.read([Request(name, lo, hi, out)])
                yield as_bytes(out)
            progress(i + 1, len(names))

    return fs.publish_chunks(out_url, chunks())


def detect(src: str) -> str:
    """'elastiq', 'dcp' or 'state-dict' for a source URL."""
    local = fs.local_path(src)
    if (
        local is not None
        and os.path.isdir(local)
        and os.path.exists(os.path.join(local, ".metadata"))
    ):
        return "dcp"
    if src.endswith((".pt", ".pth", ".bin")) and fs.exists(src):
        return "state-dict"
    try:
        locate(src)
    except (NoCheckpoint, OSError) as exc:
        raise ValueError(
            f"{src!r} is neither an elastiq checkpoint, a DCP directory nor a .pt/.pth/.bin "
            f"state dict ({exc})"
        ) from exc
    return "elastiq"
