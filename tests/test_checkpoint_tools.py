"""`elastiq ckpt inspect|verify|convert` and the converters, on real files: a real
DCP checkpoint written by torch.distributed.checkpoint, a real torch.save file, and
an export that the safetensors package itself loads."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from elastiq.checkpoint import catalog
from elastiq.checkpoint.restore import CheckpointReader, Request
from elastiq.cli import main


def _model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "embed.weight": torch.randn(32, 8),
        "head.bias": torch.randn(5),
        "steps": torch.arange(3),
    }


def test_a_torch_save_state_dict_imports_and_exports_back_identical(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _model_state()
    src, root, out = f"{tmp_path}/model.pt", f"{tmp_path}/ckpt", f"{tmp_path}/model.safetensors"
    torch.save(state, src)
    assert main(["ckpt", "convert", src, root, "--step", "12"]) == 0
    assert catalog.committed(root) == [12]
    assert main(["ckpt", "inspect", root, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["step"] == 12 and info["tensors"] == 3
    assert main(["ckpt", "verify", root]) == 0
    assert main(["ckpt", "convert", root, out]) == 0
    exported = load_file(out)  # the safetensors package reads our layout
    assert exported.keys() == state.keys()
    assert all(torch.equal(exported[k], v) for k, v in state.items())


def test_a_dcp_checkpoint_imports_with_nested_names(tmp_path: object) -> None:
    model = _model_state()
    state = {"model": model, "optim": {"exp_avg": {"embed.weight": torch.ones(32, 8)}}}
    dcp_dir, root = f"{tmp_path}/dcp", f"{tmp_path}/ckpt"
    dcp.save(state, checkpoint_id=dcp_dir)  # no process group: a single-process save
    assert main(["ckpt", "convert", dcp_dir, root, "--step", "3"]) == 0
    reader = CheckpointReader(root, 3)
    assert set(reader.manifest.tensors) == {
        "model/embed.weight",
        "model/head.bias",
        "model/steps",
        "optim/exp_avg/embed.weight",
    }
    out = torch.empty(5)
    reader.read([Request("model/head.bias", 0, 5, out)])
    assert torch.equal(out, model["head.bias"])


def test_bad_input_gets_a_clear_error_and_writes_nothing(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ckpt", "inspect", f"{tmp_path}/nothing-here"]) == 2
    assert "no committed checkpoint" in capsys.readouterr().err
    not_a_ckpt = f"{tmp_path}/notes.txt"
    with open(not_a_ckpt, "w", encoding="utf-8") as f:
        f.write("hello")
    assert main(["ckpt", "convert", not_a_ckpt, f"{tmp_path}/out"]) == 2
    assert "neither an elastiq checkpoint" in capsys.readouterr().err
    assert not os.path.exists(f"{tmp_path}/out")


def test_a_training_run_that_does_not_fit_is_refused_and_writes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    from elastiq.checkpoint.convert import import_training_run

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    run = tmp_path / "run.pt"
    names = ["weight", "bias"]
    out = tmp_path / "ckpt"
    torch.save({"model": net.state_dict()}, run)
    with pytest.raises(ValueError, match="expected a dict with 'model' and 'optim'"):
        import_training_run(str(run), str(out), 1, names)
    torch.save({"model": net.state_dict(), "optim": opt.state_dict()}, run)
    with pytest.raises(ValueError, match="has taken 1 optimizer steps, not 5"):
        import_training_run(str(run), str(out), 5, names)
    with pytest.raises(ValueError, match="holds 2 parameters, the model 1"):
        import_training_run(str(run), str(out), 1, ["weight"])
    with pytest.raises(ValueError, match="lacks"):
        import_training_run(str(run), str(out), 1, ["w", "b"])
    assert not out.exists()
    assert import_training_run(str(run), str(out), 1, names) > 0
