"""The worker process: trains under the newest plan and survives its peers' loss.

Lifecycle: read the job config from the agent, build the model and data, say
`ready`, wait for a plan that names this worker, then loop:

- join(plan): rendezvous for the plan's generation (a fresh gloo group under the
  prefix job/g<generation>/ of the rendezvous store the plan names), agree on the
  last committed step (the lowest step among ranks that hold valid state; a rank
  one step ahead rolls back), and copy parameters and optimizer state from live
  replicas to ranks that have none (newcomers).
- train: steps until the last, reporting each to the agent. A plan that drops a
  member of this generation (abort_in_flight) supersedes the step in flight at
  once; any other newer plan (a join, a controller takeover) is adopted at the
  next step boundary, agreed in-band through the gradient reduction.
- on a failed or superseded collective: wait for a newer plan and join it. The
  process, its tensors and its data are kept: only the communicator is rebuilt.

Run by the agent as `python -m elastiq.agent.runtime.worker --read-fd R --write-fd W`.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, TextIO

import torch
from google.protobuf import json_format

from elastiq import fs, logs
from elastiq.agent.channel import Channel
from elastiq.agent.runtime.buddies import Buddies
from elastiq.agent.runtime.checkfree_rebuild import rebuild_lost_units
from elastiq.agent.runtime.checkpointing import WorkerCheckpoints
from elastiq.agent.runtime.comm import CollectiveFailed, Group, RendezvousClient, Superseded
from elastiq.agent.runtime.data.byte_corpus import SampleOrder, load_corpus
from elastiq.agent.runtime.edge_copies import EdgeCopies
from elastiq.agent.runtime.migrate import apply_moves
from elastiq.agent.runtime.pipeline import StageView, run_pipeline_step, stage_routes
from elastiq.agent.runtime.schedule import Hop
from elastiq.agent.runtime.trainer import TrainState, run_step
from elastiq.checkpoint import checkfree
from elastiq.config import JobConfig
from elastiq.partition import even_split
from elastiq.proto import elastiq_pb2 as pb

# named explicitly: run as `python -m`, __name__ would be "__main__", outside the tree
log = logging.getLogger("elastiq.agent.runtime.worker")

ALIVE_INTERVAL_S = 0.25
EXIT_OK, EXIT_CONFIG, EXIT_STATE_LOST, EXIT_NO_PLAN = 0, 2, 3, 4


class StateLost(Exception):
    """No rank of the generation holds valid state (and no other source was given)."""


class PlanBox:
    """The newest plan the agent has relayed; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._plan: pb.Plan | None = None
        self._abort_above = 0
        self.shutdown = False

    def offer(self, plan: pb.Plan) -> None:
        with self._cond:
            if self._plan is None or plan.generation > self._plan.generation:
                self._plan = plan
                if plan.abort_in_flight:
                    self._abort_above = max(self._abort_above, plan.generation)
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.shutdown = True
            self._cond.notify_all()

    def newest_generation(self) -> int:
        with self._cond:
            return self._plan.generation if self._plan is not None else 0

    def aborts(self, generation: int) -> bool:
        """True when a plan newer than `generation` drops one of its members."""
        return self._abort_above > generation

    def wait_newer(self, generation: int, timeout_s: float) -> pb.Plan | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.shutdown:
                if self._plan is not None and self._plan.generation > generation:
                    return self._plan
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))
        return None


class Worker:
    def __init__(self, channel: Channel, cfg: JobConfig, worker_id: str, node_id: str) -> None:
        self.channel = channel
        self.cfg = cfg
        self.worker_id = worker_id
        self.node_id = node_id
        self.plans = PlanBox()
        self.rendezvous = RendezvousClient()
        self.state = TrainState(cfg)
        self.order = SampleOrder(load_corpus(cfg.data, cfg.data_max_bytes), cfg.seq_len, cfg.seed)
        self.valid = False  # holds the job's state (init at generation 1, or received)
        self.group: Group | None = None
        self.plan: pb.Plan | None = None
        self.stage_group: Group | None = None
        self.view: StageView | None = None
        self.intervals: list[tuple[int, int]] | None = None
        self.buddies = Buddies(cfg.unit_numel())
        self.edge_copies = EdgeCopies(enabled=cfg.checkfree_plus)
        self._die_after_update_of = 0  # chaos kill-before-snapshot: the step, 0 if unarmed
        self.checkpoints = WorkerCheckpoints(cfg)
        # the generation whose layout this worker's state matches (last completed join)
        self.held_generation = 0
        self._step_log: TextIO | None = None
        if cfg.step_log:
            os.makedirs(cfg.step_log, exist_ok=True)
            # line-buffered: one write per step, readable while the job runs
            self._step_log = open(  # noqa: SIM115 -- lives as long as the worker
                os.path.join(cfg.step_log, f"{worker_id}.jsonl"),
                "a",
                buffering=1,
                encoding="utf-8",
            )
        self.generation = 0
        self.rank = -1
        self.last_step_time = time.time()
        logs.context.job = cfg.job

    # agent link -------------------------------------------------------------------
    def _listen(self) -> None:
        while True:
            message = self.channel.recv()
            if message is None or message.get("type") == "shutdown":
                self.plans.stop()
                return
            if message.get("type") == "plan":
                plan = json_format.ParseDict(message["plan"], pb.Plan())
                self.plans.offer(plan)
            elif message.get("type") == "chaos":
                self._die_after_update_of = int(message["die_after_update_of"])

    def _alive(self) -> None:
        while not self.plans.shutdown:
            if not self.channel.send({"type": "alive", "t": time.time()}):
                return
            time.sleep(ALIVE_INTERVAL_S)

    def event(self, kind: str, detail: str = "", **extra: Any) -> None:
        self.channel.send(
            {
                "type": "event",
                "kind": kind,
                "detail": detail,
                "generation": self.generation,
                "rank": self.rank,
                "step": self.state.step,
                "wall": time.time(),
                **extra,
            }
        )

    # protocol ---------------------------------------------------------------------
    def my_assignment(self, plan: pb.Plan) -> pb.Assignment | None:
        for a in plan.assignments:
            if a.worker_id == self.worker_id:
                return a
        return None

    def join(self, plan: pb.Plan) -> dict[str, float]:
        """Enter `plan`'s generation: new communicator, agreed step, state to newcomers."""
        mine = self.my_assignment(plan)
        if mine is None:
            raise ValueError(f"plan {plan.generation} does not name worker {self.worker_id}")
        t0 = time.time()
        reached = self.state.step if self.valid else 0  # what a rollback or restore undoes
        self.generation, self.rank = plan.generation, mine.rank
        logs.context.generation, logs.context.rank = plan.generation, mine.rank
        if plan.state_source == "init" and not self.valid and self.state.step == 0:
            self.valid = True
        self.group = None
        store = self.rendezvous.store(plan.rendezvous, self.cfg.rendezvous_timeout_s)
        group = Group.build(
            store,
            f"{plan.job}/g{plan.generation}/",
            mine.rank,
            plan.world_size,
            plan.generation,
            self.cfg.collective_timeout_s,
            self.cfg.rendezvous_timeout_s,
            lambda: self.plans.aborts(plan.generation),
        )
        view = stage_view(plan, mine.rank, self.cfg)
        if view.stages == 1:
            stage_group = group
        else:
            stage_group = Group.build(
                store,
                f"{plan.job}/g{plan.generation}/stage{view.stage}/",
                view.replica,
                view.degree(view.stage),
                plan.generation,
                self.cfg.collective_timeout_s,
                self.cfg.rendezvous_timeout_s,
                lambda: self.plans.aborts(plan.generation),
            )
        t_comm = time.time()
        # a checkpoint copy in flight must not see a rollback or a re-split
        self.checkpoints.wait_for_copies()
        try:
            if plan.state_source == "checkpoint":
                committed, moved = self._restore_checkpoint(plan, group, mine.rank)
                rolled_back = False
            else:
                committed, rolled_back = self._agree(plan, group, mine.rank)
                moved = self._move_state(plan, group, mine.rank, committed)
        except BaseException:
            # the state may be half re-split: never let it serve as a source again
            self.valid = False
            raise
        self.group, self.stage_group, self.view = group, stage_group, view
        self.checkpoints.prepare(self.state, view.degree(view.stage), view.replica)
        logs.context.step = self.state.step
        t_end = time.time()
        timings = {
            "comm_rebuild_s": t_comm - t0,
            "migrate_s": t_end - t_comm,
            "join_start": t0,
            # rides with the timings to the controller, which counts the steps lost
            "reached_step": float(reached),
        }
        log.info(
            "joined generation %d as rank %d/%d at committed step %d%s; comm %.3fs, migrate %.3fs "
            "(%d bytes)",
            plan.generation,
            mine.rank,
            plan.world_size,
            committed,
            " (rolled back one step)" if rolled_back else "",
            t_comm - t0,
            t_end - t_comm,
            moved,
        )
        self.event(
            "joined",
            f"rank {mine.rank}/{plan.world_size}",
            timings=timings,
            committed=committed,
            moved_bytes=moved,
            rolled_back=rolled_back,
        )
        return timings

    def _agree(self, plan: pb.Plan, group: Group, me: int) -> tuple[int, bool]:
        """Agree on the last committed step and roll back to it if one step ahead.

        Each rank reports its applied step, whether its state is valid, and, if the
        plan has it serve pieces from buddy snapshots, the snapshot steps it holds for
        them. The committed step is the lowest valid step, and no later than the
        newest snapshot a buddy can serve. A buddy one step behind (its ward died
        before its snapshot arrived) first gets the ward's kept gradient to replay
        that step from (ZeRO-1), so that nobody rolls back."""
        pieces = [(m.lo, m.hi) for m in plan.moves if m.src_rank == me and m.via == "buddy"]
        avail = self.buddies.newest_steps_covering(pieces)
        # a worker whose last join was interrupted before it changed anything still
        # holds the source layout's state; anything else is not a valid source
        holds_source = self.valid and (
            plan.source_generation == 0 or self.held_generation == plan.source_generation
        )
        whole = int(
            holds_source
            and self.state.unit_range == (0, len(self.cfg.unit_numel()))
            and (self.state.opt.lo, self.state.opt.hi) == (0, self.state.flat.numel)
        )
        info = torch.tensor(
            [
                self.state.step if holds_source else -1,
                int(holds_source),
                int(bool(pieces)),
                *avail,
                whole,
            ],
            dtype=torch.int64,
        )
        table = [[int(x) for x in t] for t in group.allgather(info)]
        if not any(t[1] for t in table):
            raise StateLost(
                f"generation {plan.generation}: no member holds the job's state "
                f"(every holder of the previous generation is gone)"
            )
        committed = min(t[0] for t in table if t[1])
        needy = {r for r, t in enumerate(table) if t[2] and max(t[3], t[4]) < committed}
        if needy and plan.zero == 1:
            self._hand_over_gradients(plan, group, table, needy, pieces, holds_source)
        for t in table:
            if t[2]:
                committed = min(committed, max(t[3], t[4]))
        for rank, t in enumerate(table):
            if t[2] and committed not in (t[3], t[4]):
                raise StateLost(
                    f"generation {plan.generation}: rank {rank} holds snapshots of steps "
                    f"{t[3:5]} but the committed step is {committed}"
                )
        for m in plan.moves:
            if m.via == "live" and not table[m.src_rank][1]:
                raise StateLost(
                    f"generation {plan.generation}: the plan takes {m.what} [{m.lo}, {m.hi}) "
                    f"from rank {m.src_rank}, which holds no valid state"
                )
        if not holds_source:
            self.valid = False  # it will receive everything it needs
        ahead = max(t[0] for t in table if t[1])
        replicated = plan.zero == 0 and len(plan.stages) == 1
        if ahead > committed and replicated and all(t[5] for t in table if t[1]):
            # plain data parallelism and a rank finished the step the others did not
            # (the lost peer had already sent its part of the reduction): everyone
            # holds the whole state, so the laggards take it from that rank instead
            # of the others rolling back (no step is lost)
            src = next(r for r, t in enumerate(table) if t[1] and t[0] == ahead)
            total = sum(self.cfg.unit_numel())
            mine = self.valid and bool(whole)
            for k in range(3):
                if mine:
                    opt = self.state.opt
                    tensor = (self.state.flat.data, opt.exp_avg, opt.exp_avg_sq)[k]
                else:  # a newcomer: the plan's moves fill it afterwards
                    tensor = torch.empty(total)
                group.broadcast_(tensor, src)
            if mine:
                self.state.adopt_step(ahead)
            return ahead, False
        rolled_back = self.valid and self.state.step > committed
        if self.valid:
            self.state.rollback_to(committed)
        return committed, rolled_back

    def _hand_over_gradients(
        self,
        plan: pb.Plan,
        group: Group,
        table: list[list[int]],
        needy: set[int],
        pieces: list[tuple[int, int]],
        holds_source: bool,
    ) -> None:
        """ZeRO-1: the buddies in `needy` lag the step the survivors reached; they get
        kept gradients to replay from (agent/runtime/buddies.py), then every rank learns the
        buddies' steps again."""
        source = self.plan if holds_source else None
        if source is not None and source.generation != plan.source_generation:
            source = None
        holders = [bool(t[1]) for t in table]
        self.buddies.hand_over(source, plan, group, holders, needy, self.state)
        steps = group.allgather(torch.tensor(self.buddies.newest_steps_covering(pieces)))
        for t, mine in zip(table, steps, strict=True):
            t[3], t[4] = int(mine[0]), int(mine[1])

    def _move_state(self, plan: pb.Plan, group: Group, me: int, committed: int) -> int:
        """Take this rank's place in the new layout: its stage's units (a new state if
        they changed), its ZeRO interval, and the plan's moves; returns bytes received."""
        old = self.state
        old_base = old.base
        old_m_lo, _ = old.moment_range
        # the old moments, kept: a re-split in place replaces them (keeping the overlap)
        old_avg, old_avg_sq = old.opt.exp_avg, old.opt.exp_avg_sq
        new = self._state_for(plan, me)
        if new is not old:
            _copy_overlap(old.flat.data, old_base, new.flat.data, new.base)
            _copy_overlap(old_avg, old_m_lo, new.opt.exp_avg, new.moment_range[0])
            _copy_overlap(old_avg_sq, old_m_lo, new.opt.exp_avg_sq, new.moment_range[0])
            new.step, new.opt.step_count = old.step, old.opt.step_count

        def source(what: str, a: int, b: int, via: str) -> list[torch.Tensor]:
            if via == "buddy":
                return self.buddies.piece(what, a, b, committed)
            if what == "params":
                return [old.flat.data[a - old_base : b - old_base]]
            return [old_avg[a - old_m_lo : b - old_m_lo], old_avg_sq[a - old_m_lo : b - old_m_lo]]

        def target(what: str, a: int, b: int) -> list[torch.Tensor]:
            if what == "params":
                return [new.flat.data[a - new.base : b - new.base]]
            m_lo = new.moment_range[0]
            return [new.opt.exp_avg[a - m_lo : b - m_lo], new.opt.exp_avg_sq[a - m_lo : b - m_lo]]

        moved = apply_moves(group, plan.moves, me, source, target)
        if plan.state_source == "checkfree":
            moved += rebuild_lost_units(plan, group, old, new, self.edge_copies)
        self.state = new
        if not self.valid:
            self.state.step = committed
            self.state.opt.step_count = committed
        self._adopt(plan, group, committed)
        return moved

    def _state_for(self, plan: pb.Plan, me: int) -> TrainState:
        """A state shaped for rank `me` of `plan`: its stage's units (the current state
        when they did not change) owning its ZeRO interval's moments; sets
        `self.intervals`. What the new shape does not cover yet is filled by the caller."""
        view = stage_view(plan, me)
        stage = plan.stages[view.stage]
        units = (stage.unit_lo, stage.unit_hi)
        new = self.state if units == self.state.unit_range else TrainState(self.cfg, units)
        degree = view.degree(view.stage)
        total = new.flat.numel
        self.intervals = (
            [even_split(total, degree, j) for j in range(degree)] if plan.zero else None
        )
        lo, hi = self.intervals[view.replica] if self.intervals else (0, total)
        new.set_moment_range(new.base + lo, new.base + hi)
        return new

    def _restore_checkpoint(self, plan: pb.Plan, group: Group, me: int) -> tuple[int, int]:
        """Every rank loads its share of the plan's checkpoint, in this plan's layout
        (a stage lost whole, or a resumed job); returns (step, bytes read)."""
        if not self.cfg.checkpoint_url:
            raise StateLost(f"plan {plan.generation} restores a checkpoint; none is configured")
        new = self._state_for(plan, me)
        step, nbytes = plan.checkpoint_step, 0
        while True:
            try:
                report = self.checkpoints.restore(new, step)
            except (OSError, ValueError) as exc:
                raise StateLost(f"generation {plan.generation}: checkpoint restore: {exc}") from exc
            nbytes += report.bytes_read
            steps = {int(t[0]) for t in group.allgather(torch.tensor([report.step]))}
            if len(steps) == 1:
                break
            # some rank could not verify the newest checkpoint: everyone takes the older
            step = min(steps)
        self.state = new
        self._adopt(plan, group, report.step)
        self.event(
            "restored",
            f"checkpoint step {report.step}",
            step=report.step,
            skipped=report.skipped,
        )
        return report.step, nbytes

    def _adopt(self, plan: pb.Plan, group: Group, committed: int) -> None:
        """The state now matches `plan`'s layout at `committed`: serve from it."""
        self.held_generation = plan.generation
        self.valid = True
        self.plan = plan
        self.state.scale_lr_of_units(list(plan.lr_scaled_units), plan.lr_scale or 1.0)
        self.buddies.adopt(plan, group, self.state, committed)
        self.edge_copies.adopt(plan, group, self.state, committed)

    def _write_final_params(self) -> None:
        """Rank 0 writes the whole model's parameters in global order; the first
        replica of every other stage sends it its stage first."""
        view, group = self.view, self.group
        if view is None or group is None:
            return
        tag = 1 << 25
        if view.replica == 0 and view.stage > 0:
            group.send(self.state.flat.data, view.stage_ranks[0][0], tag)
            return
        if self.rank != 0:
            return
        sizes = self.cfg.unit_numel()
        pieces = [self.state.flat.data.clone()]
        for st in list(self.plan.stages)[1:] if self.plan is not None else []:
            piece = torch.empty(sum(sizes[st.unit_lo : st.unit_hi]))
            group.recv(piece, st.ranks[0], tag)
            pieces.append(piece)
        buffer = io.BytesIO()
        torch.save({"step": self.state.step, "params": torch.cat(pieces)}, buffer)
        fs.write_bytes(self.cfg.final_params, buffer.getvalue())
        log.info("wrote the final parameters to %s", self.cfg.final_params)

    def train(self) -> pb.Plan | None:
        """Run steps; return a newer plan to switch to, or None when the last step is done."""
        group = self.group
        if group is None:
            raise RuntimeError("train() called before join() built this generation's group")
        first_in_generation = True
        while self.state.step < self.cfg.steps:
            step = self.state.step + 1
            t0 = time.perf_counter()
            want_switch = self.plans.newest_generation() > self.generation
            zero = self.plan.zero if self.plan is not None else 0
            if self.view is not None and self.view.stages > 1 and self.stage_group is not None:
                result = run_pipeline_step(
                    self.state,
                    group,
                    self.stage_group,
                    self.view,
                    self.order,
                    step,
                    want_switch,
                    self.intervals,
                    zero,
                    before_reduce=lambda: self._before_reduce(group),
                )
            else:
                routes = self.view.routes if self.view is not None else ()
                result = run_step(
                    self.state,
                    group,
                    self.order,
                    step,
                    want_switch,
                    self.intervals,
                    zero,
                    before_reduce=lambda: self._before_reduce(group),
                    orders=[r[0].units for r in routes] if routes else None,
                )
            if self._die_after_update_of and step >= self._die_after_update_of:
                self._die_before_snapshot(step)
            self.buddies.start(group, step, self.state)
            self.buddies.keep_gradients(step, self.state, self.intervals)
            self.edge_copies.start(group, step)
            if self.view is not None:
                self.checkpoints.maybe_save(
                    self.state,
                    rank=group.rank,
                    world=group.world,
                    degree=self.view.degree(self.view.stage),
                    replica=self.view.replica,
                )
            if self.cfg.step_delay_s:
                time.sleep(self.cfg.step_delay_s)
            elapsed = time.perf_counter() - t0
            logs.context.step = step
            if self._step_log is not None:
                self._step_log.write(
                    f'{{"step": {step}, "generation": {self.generation}, "rank": {self.rank}, '
                    f'"loss": {result.loss:.6f}, "step_time": {elapsed:.6f}, '
                    f'"wall": {time.time():.6f}}}\n'
                )
            self.channel.send(
                {
                    "type": "step",
                    "step": step,
                    "loss": result.loss,
                    "gen": self.generation,
                    "rank": self.rank,
                    "wall": time.time(),
                    "step_time": elapsed,
                    "tokens_per_s": self.cfg.global_batch * self.cfg.seq_len / elapsed,
                    "first_in_generation": first_in_generation,
                    "unit_costs": self.state.take_unit_costs() if step % 10 == 0 else {},
                    **self.checkpoints.progress(),
                }
            )
            first_in_generation = False
            if result.switch:
                plan = self.plans.wait_newer(self.generation, self.cfg.rendezvous_timeout_s)
                if plan is None:
                    raise CollectiveFailed("a peer announced a new generation that never arrived")
                return plan
        self.buddies.finish(group)
        self.edge_copies.finish(group)
        self.checkpoints.finish(self.cfg.collective_timeout_s)
        return None

    def _die_before_snapshot(self, step: int) -> None:
        """Chaos kill-before-snapshot: the update of `step` is applied here and in
        every peer, and nothing of this rank's interval of it has left the process."""
        log.warning("chaos: killing myself after my update of step %d, before its snapshot", step)
        self.channel.send({"type": "chaos-fired", "step": step, "wall": time.time()})
        os.kill(os.getpid(), signal.SIGKILL)

    def _before_reduce(self, group: Group) -> None:
        """After backward, before the reduction that precedes the update: the last
        moment the previous step's snapshot and checkpoint copies may still run."""
        self.buddies.finish(group)
        self.edge_copies.finish(group)
        self.checkpoints.wait_for_copies()

    def run(self) -> int:
        threading.Thread(target=self._listen, name="agent-listener", daemon=True).start()
        threading.Thread(target=self._alive, name="alive", daemon=True).start()
        self.channel.send({"type": "ready", "pid": os.getpid()})
        plan = self.plans.wait_newer(0, self.cfg.idle_timeout_s)
        if plan is None and not self.plans.shutdown:
            log.error("no plan named this worker within %.0f s; exiting", self.cfg.idle_timeout_s)
            return EXIT_NO_PLAN
        while plan is not None:
            if self.my_assignment(plan) is None:
                if self.generation == 0:
                    # a spare: wait, ready, for a plan that gives it a lost worker's place
                    plan = self.plans.wait_newer(plan.generation, self.cfg.idle_timeout_s)
                    continue
                log.info("generation %d does not include this worker; leaving", plan.generation)
                return EXIT_OK
            try:
                self.join(plan)
                plan = self.train()
                if plan is None:
                    if self.cfg.final_params:
                        self._write_final_params()
                    self.channel.send(
                        {
                            "type": "finished",
                            "step": self.state.step,
                            "gen": self.generation,
                            "wall": time.time(),
                        }
                    )
                    # stay: a peer that failed in the last step may still need this state
                    plan = self.plans.wait_newer(self.generation, self.cfg.idle_timeout_s)
            except (Superseded, CollectiveFailed) as exc:
                self.group = None
                self.buddies.abandon()
                self.edge_copies.abandon()
                log.warning("generation %d interrupted: %s", self.generation, exc)
                self.event("interrupted", str(exc))
                plan = self.plans.wait_newer(self.generation, 120.0)
                if plan is None and not self.plans.shutdown:
                    log.error("no newer plan within 120 s after a failure; exiting")
                    return EXIT_NO_PLAN
            except StateLost as exc:
                log.error("%s", exc)
                self.event("state_lost", str(exc))
                return EXIT_STATE_LOST
        return EXIT_OK


def stage_view(plan: pb.Plan, rank: int, cfg: JobConfig | None = None) -> StageView:
    """Where `rank` sits in the plan's pipeline, and (given the job config) each
    micro-batch's route when CheckFree+ swaps blocks."""
    stage_ranks = tuple(tuple(st.ranks) for st in plan.stages)
    routes: tuple[tuple[Hop, ...], ...] = ()
    if cfg is not None and cfg.checkfree_plus and (plan.swap_first or plan.swap_last):
        groups = checkfree.SwapGroups(
            blocks=cfg.model.n_layers, first=plan.swap_first, last=plan.swap_last
        )
        units = len(cfg.unit_numel())
        orders = [checkfree.unit_order(units, mb, groups) for mb in range(cfg.micro_batches)]
        routes = stage_routes([(st.unit_lo, st.unit_hi) for st in plan.stages], orders)
    for s, ranks in enumerate(stage_ranks):
        if rank in ranks:
            return StageView(s, ranks.index(rank), stage_ranks, routes)
    raise ValueError(f"plan {plan.generation} puts rank {rank} in no stage")


def _copy_overlap(src: torch.Tensor, src_lo: int, dst: torch.Tensor, dst_lo: int) -> None:
    """Copy the global elements both flat tensors hold (each starts at its global lo)."""
    a = max(src_lo, dst_lo)
    b = min(src_lo + src.numel(), dst_lo + dst.numel())
    if a < b:
        dst[a - dst_lo : b - dst_lo].copy_(src[a - src_lo : b - src_lo])


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its agent dies, as losing a node would."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(EXIT_NO_PLAN)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(description="elastiq worker (started by the agent)")
    parser.add_argument("--read-fd", type=int, required=True)
    parser.add_argument("--write-fd", type=int, required=True)
    args = parser.parse_args(argv)
    channel = Channel(args.read_fd, args.write_fd)
    hello = channel.recv()
    if hello is None or hello.get("type") != "config":
        print("worker: the agent did not send a config first", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(hello.get("log_level", "INFO"), role=f"worker[{hello['worker_id']}]")
    torch.set_num_threads(1)
    try:
        cfg = JobConfig.from_json(hello["config"])
    except ValueError as exc:
        log.error("invalid job config: %s", exc)
        return EXIT_CONFIG
    worker = Worker(channel, cfg, hello["worker_id"], hello["node_id"])
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
