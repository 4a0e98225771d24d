"""`elastiq run`: a whole job on one machine, the way a cluster runs it.

The controller runs in this process (embedded store unless told otherwise);
each node is a real `elastiq agent` subprocess owning its worker processes, so
chaos kills real processes with real signals. While the job runs the user sees a
progress bar (step, loss, tokens/s, generation), each membership event as it
happens, and at the end a summary: steps, final loss, failures survived and the
recovery time of each. The controller's address and token are written to a run
file so `elastiq status` and `elastiq chaos` find the job without flags.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig, JobController
from elastiq.controller.server import Controller, ServerConfig
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

CHAOS_ACTIONS = {
    "kill-worker": pb.KILL_WORKER,
    "hang": pb.HANG_WORKER,
    "kill-node": pb.KILL_NODE,
    "kill-before-snapshot": pb.KILL_BEFORE_SNAPSHOT,
}


@dataclass(frozen=True, slots=True)
class ChaosSpec:
    """One scheduled fault: `kill-worker:rank=2,step=50`, `hang:rank=1,step=30`,
    `kill-node:node=node1,step=40`, `kill-before-snapshot:rank=1,step=15` (after its
    update of step 15, before its snapshot of it leaves)."""

    action: str
    rank: int = -1
    node: str = ""
    step: int = 0

    @classmethod
    def parse(cls, text: str) -> ChaosSpec:
        action, _, rest = text.partition(":")
        if action not in CHAOS_ACTIONS:
            raise ValueError(f"chaos {text!r}: action must be one of {sorted(CHAOS_ACTIONS)}")
        fields: dict[str, str] = {}
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key not in ("rank", "node", "step"):
                raise ValueError(f"chaos {text!r}: expected rank=R, node=N or step=S, got {part!r}")
            fields[key] = value
        try:
            spec = cls(
                action,
                int(fields.get("rank", -1)),
                fields.get("node", ""),
                int(fields.get("step", 0)),
            )
        except ValueError as exc:
            raise ValueError(f"chaos {text!r}: rank and step must be integers") from exc
        if action == "kill-node" and not spec.node:
            raise ValueError(f"chaos {text!r}: kill-node needs node=NODE_ID")
        if action != "kill-node" and spec.rank < 0:
            raise ValueError(f"chaos {text!r}: {action} needs rank=R")
        return spec


@dataclass(kw_only=True, slots=True)
class LocalRunConfig:
    """Shape of a local run."""

    workers: int = 4
    """Total worker processes."""
    workers_per_node: int = 1
    """Workers per agent (node); workers must be a multiple of it."""
    spare_nodes: int = 0
    """Extra agents whose workers wait as spares and replace lost workers in place."""
    store: str = "embedded"
    """Controller store URL."""
    chaos: list[ChaosSpec] = field(default_factory=list)
    """Faults to inject, by (rank, step)."""
    liveness_timeout_s: float = 3.0
    """Agent watchdog: kill a worker silent for this long."""
    progress_timeout_s: float = 120.0
    """Agent watchdog: kill a worker without a step for this long."""
    lease_ttl_s: float = 3.0
    """Node lease TTL."""
    run_dir: str = ""
    """Where the run file and logs go (default ./runs/<job>)."""
    summary_json: str = ""
    """Also write the summary as JSON here."""
    log_level: str = "WARNING"
    """Log level of the agents and workers (their logs go to run_dir)."""
    metrics_port: int = -1
    """Prometheus port of the controller (-1 off, 0 any free port)."""

    def __post_init__(self) -> None:
        if self.spare_nodes < 0:
            raise ValueError(f"spare_nodes={self.spare_nodes} must be >= 0")
        if self.workers < 1 or self.workers_per_node < 1:
            raise ValueError("workers and workers_per_node must be at least 1")
        if self.workers % self.workers_per_node:
            raise ValueError(
                f"workers={self.workers} must be a multiple of "
                f"workers_per_node={self.workers_per_node}"
            )
        for spec in self.chaos:
            if spec.action != "kill-node" and spec.rank >= self.workers:
                raise ValueError(
                    f"chaos {spec.action}: rank {spec.rank} does not exist with {self.workers} "
                    f"workers (ranks 0..{self.workers - 1})"
                )
            if spec.action == "kill-node" and spec.node not in {
                f"node{i}" for i in range(self.workers // self.workers_per_node)
            }:
                raise ValueError(
                    f"chaos kill-node: node {spec.node!r} does not exist; local nodes are "
                    f"node0..node{self.workers // self.workers_per_node - 1}"
                )
        if self.workers > 64:
            raise ValueError(f"workers={self.workers}: a local run is limited to 64 processes")


def run_file_path(job: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".elastiq", "local", f"{job}.json")


class ProgressView:
    """A progress bar on a terminal, plain lines otherwise; events as they happen."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.tty = out.isatty()
        self.seen_events = 0
        self.last_line = 0.0
        self.last_text = ""
        self.bar_shown = False

    def update(self, status: pb.StatusResponse) -> None:
        new = list(status.events)[self.seen_events :]
        self.seen_events = len(status.events)
        for ev in new:
            if ev.kind in (
                "plan",
                "worker_exited",
                "worker_hung",
                "node_lost",
                "recovered",
                "chaos",
                "failed",
                "finished",
                "takeover",
                "worker_failed",
            ):
                self._clear_bar()
                stamp = time.strftime("%H:%M:%S", time.localtime(ev.wall_time))
                print(f"[{stamp}] gen {ev.generation}: {ev.kind}: {ev.message}", file=self.out)
        members = sum(1 for m in status.members if m.rank >= 0)
        done = min(status.step, self.total)
        width = 30
        filled = int(width * done / max(1, self.total))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] step {done}/{self.total} "
            f"loss {status.loss:.3f} tok/s {status.tokens_per_s:,.0f} "
            f"gen {status.generation} workers {members}"
        )
        if self.tty:
            print("\r" + line, end="", file=self.out, flush=True)
            self.bar_shown = True
        elif line != self.last_text and (
            time.monotonic() - self.last_line > 5.0 or done == self.total
        ):
            print(line, file=self.out, flush=True)
            self.last_line = time.monotonic()
            self.last_text = line

    def _clear_bar(self) -> None:
        if self.tty and self.bar_shown:
            print("\r" + " " * 110 + "\r", end="", file=self.out)
            self.bar_shown = False

    def finish(self) -> None:
        if self.tty and self.bar_shown:
            print(file=self.out)


def summarize(status: pb.StatusResponse, wall_s: float) -> dict[str, Any]:
    recoveries = [
        {
            "generation": r.generation,
            "cause": r.cause,
            "recovery_s": round(r.resumed_time - r.failure_time, 4),
            "lost_steps": r.lost_steps,
            "phases_s": {k: round(v, 4) for k, v in sorted(r.phases.items())},
        }
        for r in status.recoveries
    ]
    return {
        "job": status.job,
        "phase": status.phase,
        "steps": status.step,
        "total_steps": status.total_steps,
        "first_loss": round(status.first_loss, 4),
        "final_loss": round(status.loss, 4),
        "generation": status.generation,
        "workers": sum(1 for m in status.members if m.rank >= 0),
        "failures_survived": status.failures if status.phase == "Succeeded" else 0,
        "failures": status.failures,
        "recoveries": recoveries,
        "wall_s": round(wall_s, 2),
        # worker processes started over the whole run (a restart would add to it)
        "workers_started": sum(1 for e in status.events if e.kind == "worker_ready"),
        "error": next((e.message for e in status.events if e.kind == "failed"), ""),
    }


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print(f"\njob {summary['job']}: {summary['phase']}", file=out)
    print(f"  steps            {summary['steps']}/{summary['total_steps']}", file=out)
    print(
        f"  loss             {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}", file=out
    )
    print(
        f"  failures survived {summary['failures_survived']} (of {summary['failures']})", file=out
    )
    print(f"  wall time        {summary['wall_s']:.1f}s", file=out)
    for r in summary["recoveries"]:
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in r["phases_s"].items())
        print(
            f"  recovery gen {r['generation']}: {r['recovery_s']:.3f}s, lost steps "
            f"{r['lost_steps']} ({r['cause']}) [{phases}]",
            file=out,
        )
    if summary["error"]:
        print(f"  error: {summary['error']}", file=out)


async def run_local_async(
    job: JobConfig,
    local: LocalRunConfig,
    out: TextIO = sys.stdout,
    on_status: Callable[[pb.StatusResponse], None] | None = None,
) -> dict[str, Any]:
    """Run the job; `on_status` sees every status polled, the final one last."""
    run_dir = local.run_dir or os.path.join("runs", job.job)
    os.makedirs(run_dir, exist_ok=True)
    token = secrets.token_hex(16)
    controller = Controller(
        job,
        ControllerConfig(
            token=token,
            min_workers=local.workers,
            max_workers=local.workers if local.spare_nodes else 0,
            settle_s=0.0,
            lease_ttl_s=local.lease_ttl_s,
            heartbeat_interval_s=min(0.5, local.lease_ttl_s / 3),
        ),
        ServerConfig(store=local.store, metrics_port=local.metrics_port),
    )
    await controller.start()
    address = f"127.0.0.1:{controller.port}"
    run_file = run_file_path(job.job)
    os.makedirs(os.path.dirname(run_file), exist_ok=True)
    with open(run_file, "w", encoding="utf-8") as fh:
        json.dump({"controller": address, "token": token, "pid": os.getpid()}, fh)
    nodes = local.workers // local.workers_per_node + local.spare_nodes
    agents: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    started = time.monotonic()
    print(
        f"elastiq: job {job.job}: {local.workers} workers on {nodes} node(s), controller {address}"
        + (f", metrics :{controller.metrics_port}" if controller.metrics_port else ""),
        file=out,
    )
    try:
        for i in range(nodes):
            log_file = open(os.path.join(run_dir, f"node{i}.log"), "wb")  # noqa: SIM115
            logs.append(log_file)
            agents.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "elastiq.cli",
                        "--log-level",
                        local.log_level,
                        "agent",
                        "--controller",
                        address,
                        "--token",
                        token,
                        "--node-id",
                        f"node{i}",
                        "--slots",
                        str(local.workers_per_node),
                        "--liveness-timeout",
                        str(local.liveness_timeout_s),
                        "--progress-timeout",
                        str(local.progress_timeout_s),
                    ],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        job_ctl = controller.job
        if job_ctl is None:
            raise RuntimeError("the local controller did not become leader")
        view = ProgressView(out, job.steps)
        pending = list(local.chaos)
        while not job_ctl.done.is_set():
            status = job_ctl.status()
            view.update(status)
            if on_status is not None:
                on_status(status)
            if job_ctl.layout is not None:
                for spec in list(pending):
                    if _schedule_chaos(job_ctl, spec):
                        pending.remove(spec)
            if all(a.poll() is not None for a in agents):
                break
            try:
                await asyncio.wait_for(job_ctl.done.wait(), 0.2)
            except TimeoutError:
                pass
        status = job_ctl.status()
        view.update(status)
        view.finish()
        if on_status is not None:
            on_status(status)
        summary = summarize(status, time.monotonic() - started)
        print_summary(summary, out)
        if local.summary_json:
            with open(local.summary_json, "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
        return summary
    finally:
        deadline = time.monotonic() + 15
        for agent in agents:
            try:
                agent.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        for fh in logs:
            fh.close()
        await controller.stop()
        try:
            os.remove(run_file)
        except OSError:
            pass


def _schedule_chaos(job_ctl: JobController, spec: ChaosSpec) -> bool:
    """Hand a scheduled fault to the controller; False to retry (node not yet registered)."""
    if spec.action == "kill-node" and spec.node not in job_ctl.nodes:
        return False
    job_ctl.inject_chaos(
        CHAOS_ACTIONS[spec.action], rank=spec.rank, node_id=spec.node, at_step=spec.step
    )
    return True


def run_local(job: JobConfig, local: LocalRunConfig, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run a job on this machine and return its summary (see `summarize`)."""
    return asyncio.run(run_local_async(job, local, out))
