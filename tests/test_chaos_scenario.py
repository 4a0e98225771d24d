"""Chaos scenarios are parsed once into a typed, validated view: what cannot run is
refused with a message that says what to set, before any process starts."""

from __future__ import annotations

import io
import pathlib
from typing import Any

import pytest

from elastiq.chaos.scenario import FAULT_KINDS, Scenario

FULL = """
job: {steps: 400, checkpoint_url: /tmp/x, checkpoint_every: 10}
workers: 4
controllers: 2
store: etcd
duration_s: 60
fault_every_s: 10
"""


def test_a_full_scenario_parses_with_every_fault_kind() -> None:
    scenario = Scenario.from_yaml(FULL)
    assert scenario.faults == list(FAULT_KINDS)
    assert scenario.job_config().steps == 400


@pytest.mark.parametrize(
    "text,why",
    [
        ("workers: 4\nworkerz: 3", "unknown fields ['workerz']"),
        ("job: {stepz: 3}", "unknown job config keys"),
        ("faults: [kill-everything]", "kill-everything"),
        ("controllers: 2\nstore: embedded", "a standby controller needs store: etcd"),
        ("faults: [corrupt-checkpoint]\njob: {steps: 5}", "job.checkpoint_url"),
        ("faults: [kill-leader]\ncontrollers: 1", "controllers: 2"),
        ("workers: four", "workers"),
        ("- a\n- b", "mapping"),
        ("{", "not valid YAML"),
    ],
)
def test_a_scenario_that_cannot_run_is_refused_with_what_to_set(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        Scenario.from_yaml(text)


def test_every_scenario_field_has_a_type_check() -> None:
    from elastiq.chaos.scenario import _TYPES

    assert set(_TYPES) == set(Scenario.__dataclass_fields__)


@pytest.mark.slow
def test_a_short_chaos_run_survives_the_control_plane_faults(tmp_path: Any) -> None:
    """The short scenario of bench/scenarios on real processes (etcd, two controllers,
    four agents), cut to the faults that involve every part at once: the leading
    controller killed, etcd restarted, a kill in the middle of a reconfiguration, a
    kill during a checkpoint write. Each is survived, no step and no committed
    checkpoint is lost, and the job reaches its last step. (bench/soak.py runs all
    eight kinds for 20 minutes.)"""
    from elastiq.chaos.runner import run_scenario

    here = pathlib.Path(__file__).parent.parent / "bench" / "scenarios" / "short.yaml"
    scenario = Scenario.from_yaml(here.read_text(), str(here))
    scenario.job.update(steps=300, checkpoint_url=str(tmp_path / "ckpt"))
    scenario.faults = [
        "kill-leader",
        "restart-etcd",
        "kill-during-reconfiguration",
        "kill-during-checkpoint",
    ]
    scenario.duration_s = 4 * scenario.fault_every_s
    out = io.StringIO()
    summary = run_scenario(scenario, str(tmp_path / "run"), out)
    assert summary.phase == "JOB_SUCCEEDED", out.getvalue()
    kinds = {f["kind"] for f in summary.faults}
    assert kinds == set(scenario.faults), out.getvalue()
    assert summary.faults_survived == summary.faults_injected, out.getvalue()
    assert summary.committed_checkpoints_lost == 0, out.getvalue()
    assert summary.steps_lost == 0, out.getvalue()
