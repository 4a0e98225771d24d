"""Checkpoints crafted by an attacker or mangled by a bad disk, fed to `elastiq ckpt`:
nothing in them is ever executed or followed outside the checkpoint, and every outcome
is a verified read or a clean exit (1: verify found problems, 2: refused) with a
message, never a traceback or a huge allocation. Real files, real torch DCP writer."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from elastiq.checkpoint import catalog
from elastiq.checkpoint.manifest import MANIFEST, Manifest, ManifestError, step_dir
from elastiq.checkpoint.restore import check_restored
from elastiq.cli import main


class _RunsCode:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _dcp_dir(tmp_path: pathlib.Path, state: dict[str, Any] | None = None) -> str:
    path = str(tmp_path / "dcp")
    dcp.save(state or {"model": {"w": torch.randn(4, 3)}}, checkpoint_id=path, no_dist=True)
    return path


def test_a_dcp_metadata_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _dcp_dir(tmp_path)
    marker = tmp_path / "pwned"
    with open(os.path.join(src, ".metadata"), "wb") as f:
        pickle.dump(_RunsCode(str(marker)), f)
    assert main(["ckpt", "convert", src, str(tmp_path / "out"), "--from", "dcp"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_dcp_item_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    src = _dcp_dir(tmp_path, {"model": {"w": torch.ones(2)}, "extra": _RunsCode(str(marker))})
    assert main(["ckpt", "convert", src, str(tmp_path / "out")]) == 2
    assert "not plain data" in capsys.readouterr().err
    assert not marker.exists()
    assert catalog.committed(str(tmp_path / "out")) == []


def test_a_dcp_metadata_naming_a_file_outside_the_directory_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    src = _dcp_dir(tmp_path)
    metadata = FileSystemReader(src).read_metadata()  # our own file: safe to unpickle
    for info in metadata.storage_data.values():
        info.relative_path = "../../etc/passwd"
    with open(os.path.join(src, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    assert main(["ckpt", "convert", src, str(tmp_path / "out"), "--from", "dcp"]) == 2
    assert "outside the checkpoint directory" in capsys.readouterr().err


def test_a_plain_dcp_checkpoint_still_imports(tmp_path: pathlib.Path) -> None:
    w = torch.randn(4, 3)
    src = _dcp_dir(tmp_path, {"model": {"w": w}, "step": 7, "opt": {"lr": 0.1}})
    assert main(["ckpt", "convert", src, str(tmp_path / "out"), "--step", "7"]) == 0
    assert catalog.committed(str(tmp_path / "out")) == [7]


def _elastiq_ckpt(tmp_path: pathlib.Path) -> tuple[str, str]:
    src, root = str(tmp_path / "model.pt"), str(tmp_path / "ckpt")
    torch.save({"w": torch.randn(64, 8), "b": torch.randn(8)}, src)
    assert main(["ckpt", "convert", src, root, "--step", "3"]) == 0
    return root, os.path.join(root, step_dir(3))


def test_a_tensor_file_that_is_a_symlink_outside_the_checkpoint_is_not_followed(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, where = _elastiq_ckpt(tmp_path)
    (name,) = [n for n in os.listdir(where) if n.endswith(".safetensors")]
    outside = tmp_path / "outside.bin"
    os.replace(os.path.join(where, name), outside)  # same bytes: the CRCs would pass
    os.symlink(outside, os.path.join(where, name))
    out = tmp_path / "export.safetensors"
    assert main(["ckpt", "convert", root, str(out)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert not out.exists()
    assert main(["ckpt", "verify", root]) == 1


def test_verify_reports_a_changed_header_byte(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, where = _elastiq_ckpt(tmp_path)
    assert main(["ckpt", "verify", root]) == 0
    (name,) = [n for n in os.listdir(where) if n.endswith(".safetensors")]
    path = os.path.join(where, name)
    data = bytearray(pathlib.Path(path).read_bytes())
    data[9] = ord("!")  # inside the JSON header, which no CRC covers
    pathlib.Path(path).write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["ckpt", "verify", root]) == 1
    assert "header is unreadable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda m: "[" * 100_000 + "]" * 100_000, id="deeply-nested"),
        pytest.param(
            lambda m: json.dumps({**m, "tensors": {"x": {"dtype": "F32", "shape": [1 << 62]}}}),
            id="absurd-shape",
        ),
        pytest.param(
            lambda m: json.dumps(
                {**m, "fragments": [{**m["fragments"][0], "hi": 1 << 50, "lo": 0}]}
            ),
            id="absurd-fragment",
        ),
        pytest.param(lambda m: json.dumps({**m, "tensors": 5}), id="wrong-type"),
        pytest.param(lambda m: json.dumps({**m, "step": 1 << 70}), id="absurd-step"),
    ],
)
def test_a_hostile_manifest_is_a_clean_refusal(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], mangle: Any
) -> None:
    root, where = _elastiq_ckpt(tmp_path)
    path = os.path.join(where, MANIFEST)
    manifest = json.loads(pathlib.Path(path).read_text())
    pathlib.Path(path).write_text(mangle(manifest))
    for command in (["verify", root], ["inspect", root], ["convert", root, f"{tmp_path}/o"]):
        assert main(["ckpt", *command]) == 2, command
        err = capsys.readouterr().err
        assert "elastiq ckpt:" in err and "Traceback" not in err


def test_a_consistent_manifest_claiming_a_huge_tensor_allocates_nothing_huge(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, where = _elastiq_ckpt(tmp_path)
    path = os.path.join(where, MANIFEST)
    manifest = json.loads(pathlib.Path(path).read_text())
    numel = 1 << 36  # 256 GiB of float32: more than this machine has
    blocks = numel * 4 // manifest["block_bytes"]
    frag = {**manifest["fragments"][0], "tensor": "model/huge", "lo": 0, "hi": numel}
    manifest["tensors"]["model/huge"] = {"dtype": "F32", "shape": [numel]}
    manifest["fragments"].append({**frag, "checksums": ["0"] * blocks})
    pathlib.Path(path).write_text(json.dumps(manifest))
    assert main(["ckpt", "verify", root]) == 1
    assert "truncated" in capsys.readouterr().out
    assert main(["ckpt", "convert", root, f"{tmp_path}/o"]) == 2
    assert "truncated" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        {"step": None},
        {"step": [4]},
        {"lr": "x", "schedule": {"peak": 1.0, "warmup": 1, "total": 10}},
        {"lr": 0.1, "schedule": None},
        {"lr": 0.1, "schedule": {"peak": 1.0, "warmup": "w", "total": 10}},
        {"lr": 0.1, "schedule": {"peak": 1.0, "warmup": 1e400, "total": 10}},
    ],
)
def test_a_manifest_whose_extra_state_has_the_wrong_types_is_a_manifest_error(
    extra: dict[str, object],
) -> None:
    """Found by test_checkpoint_fuzz: `"step": null` in extra made `ckpt verify` crash
    with a TypeError instead of saying the checkpoint is bad."""
    manifest = Manifest(step=4, tensors={}, fragments=[], extra=extra)
    with pytest.raises(ManifestError, match="extra state"):
        check_restored(manifest, [])
