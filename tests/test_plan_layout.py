"""A plan is parsed once into typed views, and a malformed one is refused with a message
that names what is wrong (a hostile or buggy peer's plan never half-applies)."""

from __future__ import annotations

import os

import pytest

from elastiq.agent.channel import MAX_FRAME, Channel
from elastiq.agent.plan_layout import Piece, PlanLayout, StateSource, Via
from elastiq.agent.runtime.plan_view import PlanView, RouteShape
from elastiq.proto import elastiq_pb2 as pb

SIZES = [6, 4, 4, 5]
PLAIN = RouteShape(blocks=2, micro_batches=4, checkfree_plus=False)


def pp2_dp2(**changes: object) -> pb.Plan:
    plan = pb.Plan(
        job="j",
        generation=3,
        world_size=4,
        zero=1,
        state_source="live_replica",
        unit_numel=SIZES,
        buddy=[2, 3, 0, 1],
        assignments=[pb.Assignment(rank=r, worker_id=f"w{r}", node_id=f"n{r}") for r in range(4)],
        stages=[
            pb.Stage(unit_lo=0, unit_hi=2, ranks=[0, 1]),
            pb.Stage(unit_lo=2, unit_hi=4, ranks=[2, 3]),
        ],
        moves=[pb.StateMove(what="moments", src_rank=2, dst_rank=1, lo=5, hi=10, via="buddy")],
    )
    for name, value in changes.items():
        field = getattr(plan, name)
        if hasattr(field, "extend"):
            del field[:]
            field.extend(value)
        else:
            setattr(plan, name, value)
    return plan


def test_a_rank_sees_its_stage_replica_buddy_wards_and_interval() -> None:
    layout = PlanLayout.parse(pp2_dp2())
    assert layout.state_source is StateSource.LIVE_REPLICA
    assert layout.moves[0].what is Piece.MOMENTS and layout.moves[0].via is Via.BUDDY
    view = PlanView.of(layout, "w3", PLAIN)
    assert view is not None
    assert (view.rank, view.stage, view.replica, view.degree) == (3, 1, 1, 2)
    assert view.buddy == 1 and view.wards == (1,)
    assert view.units == (2, 4) and view.intervals == ((0, 5), (5, 9))
    assert view.interval == (5, 9)
    assert layout.ranges[3] == ((10, 19), (15, 19))
    assert PlanView.of(layout, "w9", PLAIN) is None


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"generation": 0}, "must be positive"),
        ({"unit_numel": []}, "unit sizes"),
        ({"world_size": 5}, "do not cover 0..4"),
        ({"buddy": [2, 3, 0]}, "buddies"),
        ({"buddy": [2, 3, 0, 7]}, "buddies"),
        ({"zero": 3}, "zero=3"),
        ({"state_source": "guess"}, "'guess' is not a valid StateSource"),
        (
            {"stages": [pb.Stage(unit_lo=0, unit_hi=2, ranks=[0, 1, 2, 3])]},
            "do not tile the model's 4 layer units",
        ),
        (
            {"stages": [pb.Stage(unit_lo=0, unit_hi=4, ranks=[0, 1, 1, 3])]},
            "every rank exactly once",
        ),
        (
            {
                "moves": [
                    pb.StateMove(what="params", src_rank=9, dst_rank=0, lo=0, hi=1, via="live")
                ]
            },
            "names a rank or range that does not exist",
        ),
        (
            {
                "moves": [
                    pb.StateMove(what="params", src_rank=0, dst_rank=1, lo=0, hi=99, via="live")
                ]
            },
            "names a rank or range that does not exist",
        ),
        (
            {"moves": [pb.StateMove(what="grads", src_rank=0, dst_rank=1, lo=0, hi=1, via="live")]},
            "not a valid Piece",
        ),
    ],
)
def test_a_malformed_plan_is_refused_with_what_is_wrong(
    changes: dict[str, object], says: str
) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(".", r"\.")):
        PlanLayout.parse(pp2_dp2(**changes))


def _pipe_pair() -> tuple[Channel[pb.FromWorker, pb.ToWorker], Channel[pb.ToWorker, pb.FromWorker]]:
    a_r, b_w = os.pipe()
    b_r, a_w = os.pipe()
    return Channel(a_r, a_w, pb.FromWorker), Channel(b_r, b_w, pb.ToWorker)


def test_the_channel_carries_typed_messages_both_ways() -> None:
    agent, worker = _pipe_pair()
    try:
        assert agent.send(pb.ToWorker(plan=pp2_dp2()))
        got = worker.recv()
        assert got is not None and got.WhichOneof("kind") == "plan"
        assert PlanLayout.parse(got.plan).generation == 3
        timings = pb.JoinTimings(
            join_start=1.5, comm_rebuild_s=0.01, migrate_s=0.02, reached_step=7
        )
        worker.send(
            pb.FromWorker(joined=pb.JoinDone(generation=3, committed_step=6, timings=timings))
        )
        back = agent.recv()
        assert back is not None and back.joined.timings.reached_step == 7
    finally:
        agent.close()
        worker.close()


def test_a_garbage_or_oversized_frame_reads_as_a_closed_channel() -> None:
    agent, worker = _pipe_pair()
    try:
        os.write(agent._writer.fileno(), (MAX_FRAME + 1).to_bytes(4, "big"))
        assert worker.recv() is None
    finally:
        agent.close()
        worker.close()
    agent, worker = _pipe_pair()
    try:
        os.write(agent._writer.fileno(), (3).to_bytes(4, "big") + b"\xff\xff\xff")
        assert worker.recv() is None
    finally:
        agent.close()
        worker.close()
