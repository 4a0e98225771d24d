"""The checkpoint reader against mutated checkpoints (Hypothesis): a real committed
checkpoint, copied, then one of its files mutated (bytes flipped, truncated, garbage
appended, a manifest value replaced by any JSON). Every outcome is a clean error or a
verified read of exactly the original values: `elastiq ckpt verify` exits 0, 1 or 2
and never raises, and a restore either refuses or returns the bytes that were saved."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from elastiq.checkpoint.manifest import COMMITTED, MANIFEST, step_dir
from elastiq.checkpoint.restore import NoCheckpoint, Request, load_newest
from elastiq.cli import main

STEP = 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("pristine")
    torch.manual_seed(0)
    state = {"w": torch.randn(40, 8), "b": torch.randn(8), "n": torch.arange(5)}
    torch.save(state, base / "model.pt")
    root = str(base / "ckpt")
    assert main(["ckpt", "convert", str(base / "model.pt"), root, "--step", str(STEP)]) == 0
    yield root, state


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += _paths(value, (*prefix, i))
    return found


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    tree[path[0]] = _replace(tree[path[0]], path[1:], value)
    return tree


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_a_mutated_checkpoint_is_a_clean_error_or_a_verified_read(
    pristine: tuple[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory, data: Any
) -> None:
    source, state = pristine
    root = str(tmp_path_factory.mktemp("mutated") / "ckpt")
    shutil.copytree(source, root)
    where = pathlib.Path(root) / step_dir(STEP)
    names = sorted(os.listdir(where))
    target = where / data.draw(st.sampled_from(names))
    blob = bytearray(target.read_bytes())
    op = data.draw(st.sampled_from(["flip", "truncate", "append", "json"]))
    if op == "json" and target.name != MANIFEST:
        op = "flip"
    if op == "json" and target.name == MANIFEST:
        tree = json.loads(blob)
        path = data.draw(st.sampled_from(_paths(tree)))
        blob = bytearray(json.dumps(_replace(tree, path, data.draw(JSON))).encode())
    elif op == "truncate":
        blob = blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))]
    elif op == "append":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    elif blob:
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] ^= data.draw(st.integers(1, 255))
    target.write_bytes(bytes(blob))
    event(f"{op} {target.name if target.name in (MANIFEST, COMMITTED) else 'tensor file'}")

    assert main(["ckpt", "verify", root]) in (0, 1, 2)
    requests = [
        Request(f"model/{name}", 0, t.numel(), torch.empty(t.numel(), dtype=t.dtype))
        for name, t in state.items()
    ]
    try:
        load_newest(root, requests)
    except NoCheckpoint:
        event("refused")
        return
    event("read")
    for req, original in zip(requests, state.values(), strict=True):
        assert torch.equal(req.out, original.reshape(-1)), f"{req.tensor} read unverified bytes"
