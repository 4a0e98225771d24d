"""End to end: real controller, agents and workers; faults are real signals."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from elastiq.proto import elastiq_pb2 as pb
from tests.cluster import OPERATOR_TOKEN, Cluster, planned

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: object) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path))
    try:
        yield c
    finally:
        c.close()


def start(cluster: Cluster, nodes: int = 4, **kw: object) -> pb.StatusResponse:
    cluster.start_controller(min_workers=nodes)
    for i in range(nodes):
        cluster.start_agent(f"node{i}", **kw)  # type: ignore[arg-type]
    return cluster.wait_for("the first plan", lambda s: s.generation >= 1 and s.step >= 1, 90)


def first_loss(cluster: Cluster) -> float:
    return cluster.wait_for("the first step's loss", lambda s: s.first_loss > 0).first_loss


def test_survivors_keep_their_pids_when_a_worker_is_killed(cluster: Cluster) -> None:
    before = start(cluster)
    pids_before = planned(before)
    assert len(pids_before) == 4
    loss_start = first_loss(cluster)
    reply = cluster.call(
        "Admin", pb.AdminRequest(token=OPERATOR_TOKEN, action=pb.KILL_WORKER, rank=2, at_step=20)
    )
    assert reply.accepted
    victim = before.plan.assignments[2].worker_id
    end = cluster.wait_for(
        "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
    )
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert end.step == 80
    assert loss_start > 5.0, loss_start  # ~ln(256) for an untrained byte model
    assert end.loss < loss_start - 1.0, (loss_start, end.loss)
    assert end.generation == 2 and end.plan.world_size == 3
    survivors = planned(end)
    assert victim not in survivors
    assert survivors == {w: p for w, p in pids_before.items() if w != victim}
    assert len(end.recoveries) == 1
    rec = end.recoveries[0]
    assert rec.lost_steps == 0
    assert rec.resumed_time - rec.failure_time < 5.0
    # each survivor process is the very one that started: no worker was restarted
    assert not [
        e for e in end.events if e.kind == "worker_ready" and e.wall_time > rec.failure_time
    ]


def test_a_hung_worker_is_killed_by_the_watchdog_and_the_job_goes_on(cluster: Cluster) -> None:
    before = start(cluster, liveness_timeout=2.0)
    victim = before.plan.assignments[1].worker_id
    cluster.call(
        "Admin", pb.AdminRequest(token=OPERATOR_TOKEN, action=pb.HANG_WORKER, rank=1, at_step=15)
    )
    end = cluster.wait_for(
        "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
    )
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert [e for e in end.events if e.kind == "worker_hung" and victim in e.message]
    assert victim not in planned(end) and end.plan.world_size == 3
    assert end.step == 80


@pytest.mark.extended  # joining is proven by the Kubernetes e2e test and the pipeline joins
def test_a_fifth_agent_joining_mid_run_makes_a_five_worker_generation(tmp_path: object) -> None:
    # slow steps so the joiner's start-up (importing torch) lands mid-run
    cluster = Cluster(str(tmp_path), job={"steps": 200, "step-delay": 0.04})
    try:
        _join_mid_run(cluster)
    finally:
        cluster.close()


def _join_mid_run(cluster: Cluster) -> None:
    before = start(cluster)
    pids_before = planned(before)
    cluster.wait_for("step 20", lambda s: s.step >= 20)
    cluster.start_agent("node4")
    grown = cluster.wait_for("a 5-worker plan", lambda s: s.plan.world_size == 5, 90)
    assert grown.generation == before.generation + 1
    assert not grown.plan.abort_in_flight, "a join must not abort the step in flight"
    newcomer = [a for a in grown.plan.assignments if a.node_id == "node4"]
    assert len(newcomer) == 1 and not newcomer[0].holder
    assert grown.plan.moves and {m.dst_rank for m in grown.plan.moves} == {newcomer[0].rank}
    end = cluster.wait_for(
        "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
    )
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert {m.worker_id for m in end.members if m.state == "finished"} >= set(planned(grown))
    assert {w: p for w, p in planned(end).items() if w in pids_before} == pids_before


def test_a_killed_node_is_dropped_with_its_workers(cluster: Cluster) -> None:
    start(cluster)
    cluster.call(
        "Admin",
        pb.AdminRequest(token=OPERATOR_TOKEN, action=pb.KILL_NODE, node_id="node3", at_step=15),
    )
    end = cluster.wait_for(
        "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
    )
    assert end.phase == pb.JOB_SUCCEEDED, end
    assert "node3" not in {a.node_id for a in end.plan.assignments}
    assert cluster.agents["node3"].wait(10) == -9
    assert end.recoveries and end.recoveries[0].lost_steps == 0


def test_the_job_goes_on_when_the_controller_is_killed_and_restarted(
    tmp_path: object, etcd_server: object
) -> None:
    # The workers train on while no controller runs; paced at >= 60 ms a step, the 110
    # steps left after the kill take >= 6.6 s, longer than a restart and a takeover
    # (~3 s). Unpaced, a fast machine finished the job before the new leader replanned.
    job = {"steps": 120, "step-delay": 0.06}
    c = Cluster(str(tmp_path), store=etcd_server.url, job=job)  # type: ignore[attr-defined]
    try:
        before = start(c)
        pids_before = planned(before)
        port = c.port
        c.wait_for("step 10", lambda s: s.step >= 10)
        c.kill_controller()
        c.start_controller(min_workers=4, port=port, takeover_grace=3.0)
        taken = c.wait_for("a takeover plan", lambda s: s.generation > before.generation, 60)
        assert taken.plan.world_size == 4
        end = c.wait_for(
            "the job to finish", lambda s: s.phase in (pb.JOB_SUCCEEDED, pb.JOB_FAILED), 180
        )
        assert end.phase == pb.JOB_SUCCEEDED, end
        assert end.step == 120
        assert planned(end) == pids_before, "workers must survive a controller crash"
    finally:
        c.close()
    assert os.path.isdir(str(tmp_path))
