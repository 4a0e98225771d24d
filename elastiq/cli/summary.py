"""The end-of-run summary of `elastiq run`: printed, and optionally written as JSON
(`--summary-json`, the dataclass's fields), which CI and the benchmarks read."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TextIO

from elastiq.proto import elastiq_pb2 as pb


@dataclass(frozen=True, slots=True)
class RecoverySummary:
    generation: int
    cause: str
    recovery_s: float
    """From the failure to the end of the last member's first step in the new generation."""
    lost_steps: int
    phases_s: dict[str, float]


@dataclass(frozen=True, slots=True)
class RunSummary:
    job: str
    phase: str
    """"Succeeded", "Failed", ..."""
    steps: int
    total_steps: int
    first_loss: float
    final_loss: float
    generation: int
    workers: int
    """Members of the last plan."""
    failures_survived: int
    failures: int
    recoveries: tuple[RecoverySummary, ...]
    wall_s: float
    workers_started: int
    """Worker processes started over the whole run (a restart would add to it)."""
    error: str

    @property
    def succeeded(self) -> bool:
        return self.phase == phase_name(pb.JOB_SUCCEEDED)

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2)


def summarize(status: pb.StatusResponse, wall_s: float) -> RunSummary:
    recoveries = tuple(
        RecoverySummary(
            generation=r.generation,
            cause=r.cause,
            recovery_s=round(r.resumed_time - r.failure_time, 4),
            lost_steps=r.lost_steps,
            phases_s={k: round(v, 4) for k, v in sorted(r.phases.items())},
        )
        for r in status.recoveries
    )
    return RunSummary(
        job=status.job,
        phase=phase_name(status.phase),
        steps=status.step,
        total_steps=status.total_steps,
        first_loss=round(status.first_loss, 4),
        final_loss=round(status.loss, 4),
        generation=status.generation,
        workers=sum(1 for m in status.members if m.rank >= 0),
        failures_survived=status.failures if status.phase == pb.JOB_SUCCEEDED else 0,
        failures=status.failures,
        recoveries=recoveries,
        wall_s=round(wall_s, 2),
        workers_started=sum(1 for e in status.events if e.kind == "worker_ready"),
        error=next((e.message for e in status.events if e.kind == "failed"), ""),
    )


def print_summary(summary: RunSummary, out: TextIO) -> None:
    print(f"\njob {summary.job}: {summary.phase}", file=out)
    print(f"  steps            {summary.steps}/{summary.total_steps}", file=out)
    print(f"  loss             {summary.first_loss:.4f} -> {summary.final_loss:.4f}", file=out)
    print(f"  failures survived {summary.failures_survived} (of {summary.failures})", file=out)
    print(f"  wall time        {summary.wall_s:.1f}s", file=out)
    for r in summary.recoveries:
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in r.phases_s.items())
        print(
            f"  recovery gen {r.generation}: {r.recovery_s:.3f}s, lost steps "
            f"{r.lost_steps} ({r.cause}) [{phases}]",
            file=out,
        )
    if summary.error:
        print(f"  error: {summary.error}", file=out)


def phase_name(phase: pb.JobPhase) -> str:
    """JOB_SUCCEEDED -> "Succeeded": how users read a phase."""
    return pb.JobPhase.Name(phase).removeprefix("JOB_").capitalize()
