"""The worker process: trains under the newest plan and survives its peers' loss.

Lifecycle: read the job config from the agent, build the model and data, say
`ready`, wait for a plan that names this worker, then loop:

- join (agent/runtime/join.py): a new communicator for the plan's generation, the
  agreed committed step, state moved to where the plan puts it;
- train: steps until the last, reporting each to the agent. A plan that drops a
  member of this generation (abort_in_flight) supersedes the step in flight at
  once; any other newer plan (a join, a controller takeover) is adopted at the
  next step boundary, agreed in-band through the gradient reduction;
- on a failed or superseded collective: wait for a newer plan and join it. The
  process, its tensors and its data are kept: only the communicator is rebuilt.

Run by the agent as `python -m elastiq.agent.runtime.worker --read-fd R --write-fd W`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from elastiq import logs
from elastiq.agent.channel import Channel
from elastiq.agent.runtime.agent_link import (
    AgentLink,
    Offer,
    StartingPulse,
    Unnamed,
    WorkerChannel,
)
from elastiq.agent.runtime.buddies import Buddies
from elastiq.agent.runtime.checkpointing import WorkerCheckpoints
from elastiq.agent.runtime.comm import CollectiveFailed, Group, RendezvousClient, Superseded
from elastiq.agent.runtime.data.open_dataset import open_dataset
from elastiq.agent.runtime.edge_copies import EdgeCopies
from elastiq.agent.runtime.final_params import write_final_params
from elastiq.agent.runtime.join import Holding, JoinParts, StateLost, join_generation
from elastiq.agent.runtime.pipeline import run_pipeline_step
from elastiq.agent.runtime.plan_view import PlanView, RouteShape
from elastiq.agent.runtime.trainer import StepResult, TrainState, run_step
from elastiq.child_processes import die_with_parent
from elastiq.config import JobConfig
from elastiq.proto import elastiq_pb2 as pb

# named explicitly: run as `python -m`, __name__ would be "__main__", outside the tree
log = logging.getLogger("elastiq.agent.runtime.worker")

EXIT_OK, EXIT_CONFIG, EXIT_STATE_LOST, EXIT_NO_PLAN = 0, 2, 3, 4


@dataclass(frozen=True, slots=True)
class _Clocks:
    """A step's clocks: wall time, this thread's CPU time (the forward, backward and
    update it computed; blocked waits and gloo's own threads excluded), and the time
    it waited on pipeline neighbours and on collectives. Read before and after the
    step; the difference is the step's. On 2 cores shared by 8 workers the wall time
    says how the OS shared the cores; the CPU time says what the layout costs."""

    wall_s: float
    cpu_s: float
    process_cpu_s: float
    """Every thread of the process (gloo's, the checkpoint writer's, the snapshot
    sender's): beside cpu_s, what runs next to the training and competes for cores."""
    p2p_s: float
    collective_s: float

    @classmethod
    def read(cls, group: Group, stage_group: Group) -> _Clocks:
        groups = [group] if stage_group is group else [group, stage_group]
        return cls(
            wall_s=time.perf_counter(),
            cpu_s=time.thread_time(),
            process_cpu_s=time.process_time(),
            p2p_s=sum(g.waited.p2p_s for g in groups),
            collective_s=sum(g.waited.collective_s for g in groups),
        )

    def since(self, before: _Clocks) -> _Clocks:
        return _Clocks(
            wall_s=self.wall_s - before.wall_s,
            cpu_s=self.cpu_s - before.cpu_s,
            process_cpu_s=self.process_cpu_s - before.process_cpu_s,
            p2p_s=self.p2p_s - before.p2p_s,
            collective_s=self.collective_s - before.collective_s,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 6),
            "cpu_s": round(self.cpu_s, 6),
            "process_cpu_s": round(self.process_cpu_s, 6),
            "p2p_wait_s": round(self.p2p_s, 6),
            "collective_wait_s": round(self.collective_s, 6),
        }


class Worker:
    """One training process: its lifecycle and its training loop."""

    def __init__(self, channel: WorkerChannel, cfg: JobConfig, worker_id: str) -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.holding = Holding(TrainState(cfg))
        if self.state.source.num_units < cfg.pipeline_stages:
            raise ValueError(
                f"{cfg.model_entry}: its model has {self.state.source.num_units} layer unit(s), "
                f"fewer than pipeline_stages={cfg.pipeline_stages}: lower pipeline_stages, or "
                "split the model into more units (return an elastiq.UnitModel)"
            )
        if cfg.pipeline_stages > 1 and self.state.source.boundary_shape is None:
            raise ValueError(
                f"{cfg.model_entry}: its unit boundaries carry different shapes, and pipeline "
                "stages need one shape at every boundary; run it with pipeline_stages=1"
            )
        unit_numel = list(self.state.source.unit_numel)
        shape = RouteShape(
            blocks=len(unit_numel) - 2,
            micro_batches=cfg.micro_batches,
            checkfree_plus=cfg.checkfree_plus,
        )
        self.link = AgentLink(channel, worker_id, unit_numel, shape)
        self.order = open_dataset(cfg, self.state.source.vocab)
        self.buddies = Buddies(unit_numel)
        self.edge_copies = EdgeCopies(enabled=cfg.checkfree_plus)
        self.checkpoints = WorkerCheckpoints(cfg)
        self.parts = JoinParts(
            cfg=cfg,
            rendezvous=RendezvousClient(),
            buddies=self.buddies,
            edge_copies=self.edge_copies,
            checkpoints=self.checkpoints,
            superseded=self.link.plans.aborts,
        )
        self.view: PlanView | None = None
        """The generation being joined or trained."""
        self.group: Group | None = None
        self.stage_group: Group | None = None
        self._step_log: TextIO | None = None
        self._times: _Clocks | None = None
        """The last step's clocks (its forward/backward/update, not the rest of the loop)."""
        self._unit_forward_s: dict[int, float] = {}
        """The last step's forward CPU seconds per micro-batch, by layer unit."""
        if cfg.step_log:
            os.makedirs(cfg.step_log, exist_ok=True)
            # line-buffered: one write per step, readable while the job runs
            self._step_log = open(  # noqa: SIM115 -- lives as long as the worker
                os.path.join(cfg.step_log, f"{worker_id}.jsonl"),
                "a",
                buffering=1,
                encoding="utf-8",
            )
        logs.context.job = cfg.job

    @property
    def state(self) -> TrainState:
        return self.holding.state

    @property
    def generation(self) -> int:
        return self.view.generation if self.view is not None else 0

    @property
    def rank(self) -> int:
        return self.view.rank if self.view is not None else -1

    def join(self, view: PlanView) -> None:
        """Enter `view`'s generation (agent/runtime/join.py) and tell the agent."""
        self.view, self.group, self.stage_group = view, None, None
        logs.context.generation, logs.context.rank = view.generation, view.rank
        joined = join_generation(view, self.holding, self.parts)
        self.group, self.stage_group = joined.group, joined.stage_group
        self.link.send_joined(view, joined)

    def train(self) -> Offer | None:
        """Run steps; return a newer plan to switch to, or None when the last step is done."""
        view, group, stage_group = self.view, self.group, self.stage_group
        if view is None or group is None or stage_group is None:
            raise RuntimeError("train() called before join() built this generation's groups")
        first_in_generation = True
        while self.state.step < self.cfg.steps:
            step = self.state.step + 1
            t0 = time.perf_counter()
            before = _Clocks.read(group, stage_group)
            result = self._step(view, group, stage_group, step)
            self._times = _Clocks.read(group, stage_group).since(before)
            self._unit_forward_s = self.state.take_step_unit_forward_s()
            if self.link.die_after_update_of and step >= self.link.die_after_update_of:
                self._die_before_snapshot(step)
            self.buddies.start(group, step, self.state)
            self.buddies.keep_gradients(step, self.state, view.intervals)
            self.edge_copies.start(group, step)
            self.checkpoints.maybe_save(self.state, group, degree=view.degree, replica=view.replica)
            if self.cfg.step_delay_s:
                time.sleep(self.cfg.step_delay_s)
            elapsed = time.perf_counter() - t0
            logs.context.step = step
            self._report_step(step, result.loss, elapsed, first_in_generation)
            first_in_generation = False
            if result.switch:
                offer = self.link.plans.wait_newer(view.generation, self.cfg.rendezvous_timeout_s)
                if offer is None:
                    raise CollectiveFailed("a peer announced a new generation that never arrived")
                return offer
        self.buddies.finish(group)
        self.edge_copies.finish(group)
        self.checkpoints.finish(self.cfg.collective_timeout_s)
        return None

    def _step(self, view: PlanView, group: Group, stage_group: Group, step: int) -> StepResult:
        want_switch = self.link.plans.newest_generation() > view.generation
        zero = view.layout.zero
        if view.pipeline.stages > 1:
            return run_pipeline_step(
                self.state,
                group,
                stage_group,
                view.pipeline,
                self.order,
                step,
                want_switch,
                view.intervals,
                zero,
                before_reduce=lambda: self._before_reduce(group),
            )
        routes = view.pipeline.routes
        return run_step(
            self.state,
            group,
            self.order,
            step,
            want_switch,
            view.intervals,
            zero,
            before_reduce=lambda: self._before_reduce(group),
            orders=[r[0].units for r in routes] if routes else None,
        )

    def _report_step(self, step: int, loss: float, elapsed: float, first: bool) -> None:
        now = time.time()
        if self._step_log is not None:
            line: dict[str, Any] = {
                "step": step,
                "generation": self.generation,
                "rank": self.rank,
                "loss": round(loss, 6),
                "step_time": round(elapsed, 6),
                "wall": round(now, 6),
            }
            if self._times is not None:  # where the step's own time went (issue 18)
                line["times"] = self._times.as_dict()
                line["unit_forward_s"] = {
                    str(u): round(t, 7) for u, t in sorted(self._unit_forward_s.items())
                }
            stats = self.checkpoints.engine.stats if self.checkpoints.engine else None
            if stats is not None:  # cumulative: where checkpointing's time went
                line["ckpt"] = {
                    "held_s": round(stats.save_call_s + stats.wait_s, 6),
                    "copy_s": round(stats.copy_s, 6),
                    "checksum_s": round(stats.checksum_s, 6),
                    "persist_s": round(stats.persist_s, 6),
                    "saves": stats.saves,
                    "skipped": stats.skipped,
                }
            self._step_log.write(json.dumps(line) + "\n")
        held_s, committed, skipped = self.checkpoints.progress()
        report = pb.StepDone(
            step=step,
            generation=self.generation,
            rank=self.rank,
            loss=loss,
            wall_time=now,
            step_time_s=elapsed,
            tokens_per_s=self.cfg.global_batch * self.cfg.seq_len / elapsed,
            first_in_generation=first,
            checkpoint_held_s=held_s,
            checkpoint_committed_step=committed,
            checkpoints_skipped=skipped,
        )
        if step % 10 == 0:
            report.unit_costs.update(self.state.take_unit_costs())
        self.link.send_step(report)

    def _die_before_snapshot(self, step: int) -> None:
        """Chaos kill-before-snapshot: the update of `step` is applied here and in
        every peer, and nothing of this rank's interval of it has left the process."""
        log.warning("chaos: killing myself after my update of step %d, before its snapshot", step)
        self.link.send_chaos_fired(step)
        os.kill(os.getpid(), signal.SIGKILL)

    def _before_reduce(self, group: Group) -> None:
        """After backward, before the reduction that precedes the update: the last
        moment the previous step's snapshot and checkpoint copies may still run."""
        self.buddies.finish(group)
        self.edge_copies.finish(group)
        self.checkpoints.wait_for_copies()

    def _finish(self) -> None:
        """The last step is done: write the parameters if asked, tell the agent."""
        if self.cfg.final_params and self.view is not None and self.group is not None:
            write_final_params(
                self.view,
                self.group,
                self.state,
                list(self.state.source.unit_numel),
                self.cfg.final_params,
            )
        self.link.send_finished(self.state.step, self.generation)

    def run(self) -> int:
        plans = self.link.plans
        self.link.start()
        self.link.send_ready()
        offer = plans.wait_newer(0, self.cfg.idle_timeout_s)
        if offer is None and not plans.shutdown:
            log.error("no plan named this worker within %.0f s; exiting", self.cfg.idle_timeout_s)
            return EXIT_NO_PLAN
        while offer is not None:
            if isinstance(offer, Unnamed):
                if self.view is None:
                    # a spare: wait, ready, for a plan that gives it a lost worker's place
                    offer = plans.wait_newer(offer.generation, self.cfg.idle_timeout_s)
                    continue
                log.info("generation %d does not include this worker; leaving", offer.generation)
                return EXIT_OK
            try:
                self.join(offer)
                offer = self.train()
                if offer is None:
                    self._finish()
                    # stay: a peer that failed in the last step may still need this state
                    offer = plans.wait_newer(self.generation, self.cfg.idle_timeout_s)
            except (Superseded, CollectiveFailed) as exc:
                self.group = None
                self.buddies.abandon()
                self.edge_copies.abandon()
                log.warning("generation %d interrupted: %s", self.generation, exc)
                self.link.send_interrupted(self.generation, self.rank, self.state.step, str(exc))
                offer = plans.wait_newer(self.generation, 120.0)
                if offer is None and not plans.shutdown:
                    log.error("no newer plan within 120 s after a failure; exiting")
                    return EXIT_NO_PLAN
            except StateLost as exc:
                log.error("%s", exc)
                self.link.send_state_lost(self.generation, self.rank, self.state.step, str(exc))
                return EXIT_STATE_LOST
        if plans.error:
            self.link.send_state_lost(self.generation, self.rank, self.state.step, plans.error)
            return EXIT_CONFIG
        return EXIT_OK


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its agent dies, as losing a node would."""
    if not die_with_parent():  # the agent died before the request took effect
        os._exit(EXIT_NO_PLAN)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(description="elastiq worker (started by the agent)")
    parser.add_argument("--read-fd", type=int, required=True)
    parser.add_argument("--write-fd", type=int, required=True)
    args = parser.parse_args(argv)
    channel: WorkerChannel = Channel(args.read_fd, args.write_fd, pb.ToWorker)
    hello = channel.recv()
    if hello is None or hello.WhichOneof("kind") != "config":
        print("worker: the agent did not send a config first", file=sys.stderr)
        return EXIT_CONFIG
    config = hello.config
    logs.setup(config.log_level or "INFO", role=f"worker[{config.worker_id}]")
    logs.context.node = config.node_id
    torch.set_num_threads(1)
    try:
        cfg = JobConfig.from_json(config.config_json)
    except ValueError as exc:
        log.error("invalid job config: %s", exc)
        return EXIT_CONFIG
    pulse = StartingPulse(channel)
    pulse.start()
    try:
        worker = Worker(channel, cfg, config.worker_id)
    except (ValueError, OSError) as exc:
        # bad data or model: every worker would fail the same way, so say why and go
        log.error("cannot start: %s", exc)
        channel.send(pb.FromWorker(start_failed=pb.WorkerProblem(detail=str(exc)[:2000])))
        channel.close()
        return EXIT_CONFIG
    finally:
        pulse.stop()
    try:
        return worker.run()
    finally:
        channel.close()


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: destroying a group with a stuck operation would wait
    # for its timeout (see agent/runtime/comm.py)
    os._exit(exit_code)
