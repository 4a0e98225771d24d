"""The CLI as a user runs it: `elastiq run`, then `status` and `chaos` against it."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def elastiq(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elastiq.cli", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def test_run_status_and_chaos_on_a_local_job(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}  # the run file lives under $HOME/.elastiq
    summary = tmp_path / "summary.json"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "elastiq.cli",
            "run",
            "--job",
            "clitest",
            "--workers",
            "4",
            "--steps",
            "250",
            "--global-batch",
            "16",
            "--micro-batch",
            "2",
            "--seq-len",
            "32",
            "--dim",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--step-delay",
            "0.03",
            "--summary-json",
            str(summary),
        ],
        env=env,
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            status = elastiq("status", "--job", "clitest", "--json", env=env)
            if status.returncode == 0 and int(json.loads(status.stdout).get("step", 0)) >= 10:
                break
            time.sleep(0.3)
        assert status is not None and status.returncode == 0, status
        table = elastiq("status", "--job", "clitest", env=env)
        assert table.returncode == 0
        assert "phase Running" in table.stdout and "generation 1" in table.stdout
        assert table.stdout.count("node") >= 4 and "last events:" in table.stdout

        refused = elastiq("chaos", "--job", "clitest", "kill-worker", "--rank", "9", env=env)
        assert refused.returncode == 2 and "rank 9 is out of range" in refused.stderr

        killed = elastiq("chaos", "--job", "clitest", "kill-worker", "--rank", "1", env=env)
        assert killed.returncode == 0 and "rank 1" in killed.stdout
        out, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    assert run.returncode == 0, out
    assert "worker_exited" in out and "recovered" in out and "failures survived 1" in out
    result = json.loads(summary.read_text())
    assert result["phase"] == "Succeeded" and result["steps"] == 250
    assert result["workers"] == 3 and len(result["recoveries"]) == 1
    assert result["recoveries"][0]["lost_steps"] == 0
    assert not (tmp_path / ".elastiq" / "local" / "clitest.json").exists(), "run file not removed"


def test_bad_chaos_spec_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    bad = elastiq("run", "--chaos", "explode:rank=1", env=env)
    assert bad.returncode == 2 and "action must be one of" in bad.stderr
    bad = elastiq("run", "--workers", "2", "--chaos", "kill-worker:rank=5,step=3", env=env)
    assert bad.returncode == 2 and "rank 5 does not exist with 2 workers" in bad.stderr
    bad = elastiq("run", "--global-batch", "10", "--micro-batch", "4", env=env)
    assert bad.returncode == 2 and "must be a multiple of micro_batch=4" in bad.stderr
    none = elastiq("status", "--job", "nothing-here", env={**env, "ELASTIQ_CONTROLLER": ""})
    assert none.returncode != 0 and "no controller" in none.stderr


def test_kill_before_snapshot_is_scheduled_by_rank_and_step() -> None:
    from elastiq.cli.chaos_spec import CHAOS_ACTIONS, ChaosSpec
    from elastiq.proto import elastiq_pb2 as pb

    spec = ChaosSpec.parse("kill-before-snapshot:rank=1,step=15")
    assert (spec.rank, spec.step, CHAOS_ACTIONS[spec.action]) == (1, 15, pb.KILL_BEFORE_SNAPSHOT)
    with pytest.raises(ValueError, match="kill-before-snapshot needs rank=R"):
        ChaosSpec.parse("kill-before-snapshot:step=15")


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_stopped_local_run_leaves_no_agent_or_worker_running(
    tmp_path: pathlib.Path, sig: str
) -> None:
    """`kill`, `timeout` or a supervisor stops `elastiq run`: SIGTERM ends it as Ctrl-C
    does (agents stopped, run file removed, exit 143), and even SIGKILL, which it
    cannot see, takes its agents and their workers with it. Before, both left them
    training for ever (found when a benchmark was stopped)."""
    from elastiq.child_processes import child_pids

    env = {**os.environ, "HOME": str(tmp_path)}
    job = ["--job", "stopme", "--workers", "2", "--steps", "100000"]
    model = ["--dim", "32", "--layers", "2", "--heads", "2"]
    run = subprocess.Popen(
        [sys.executable, "-m", "elastiq.cli", "run", *job, *model],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    agents: list[int] = []
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            agents = child_pids(run.pid)
            workers = [w for a in agents for w in child_pids(a)]
            if len(agents) == 2 and len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(agents) == 2 and len(workers) == 2, (agents, workers)
        run.send_signal(getattr(signal, sig))
        code = run.wait(30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(map(_running, agents + workers)):
            time.sleep(0.1)
        left = [p for p in agents + workers if _running(p)]
        assert not left, f"still running after {sig}: {left}"
        if sig == "SIGTERM":
            assert code == 143, run.stderr.read() if run.stderr else code
            assert not (tmp_path / ".elastiq" / "local" / "stopme.json").exists()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        for pid in agents + workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
