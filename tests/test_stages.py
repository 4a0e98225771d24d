"""Pure stage balancing, ZeRO intervals and routing: no processes, microseconds."""

from __future__ import annotations

import random
import time

import pytest

from elastiq.controller.stages import (
    StageBalanceError,
    balance_stages,
    bottleneck,
    moved_units,
    predicted_step_s,
)
from elastiq.partition import (
    buddies,
    micro_batches_of,
    replica_of,
)


def test_equal_layers_and_degrees_split_evenly() -> None:
    assert balance_stages([1.0] * 8, [2, 2, 2, 2]) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_losing_a_replica_shifts_layers_away_from_that_stage() -> None:
    before = [(0, 4), (4, 8)]
    after = balance_stages([1.0] * 8, [1, 2], current=before)
    # stage 0 lost one of its two replicas: it should carry fewer layers now
    assert after[0][1] - after[0][0] < 4
    assert bottleneck([1.0] * 8, [1, 2]) < 4.0  # better than keeping the old split (4/1)


def test_among_balanced_partitions_the_one_moving_fewest_bytes_wins() -> None:
    costs = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    sizes = [1, 1, 100, 1, 1, 1]  # unit 2 is heavy to move
    # two equally balanced 2-stage splits for degrees (1, 1): (0,3)(3,6) only; with a
    # tolerance, (0,2)(2,6) and (0,4)(4,6) are allowed and must not move unit 2
    after = balance_stages(costs, [1, 1], current=[(0, 3), (3, 6)], unit_bytes=sizes, tolerance=0.5)
    assert after == [(0, 3), (3, 6)]
    moved = balance_stages(costs, [1, 1], current=[(0, 2), (2, 6)], unit_bytes=sizes, tolerance=0.5)
    assert moved == [(0, 2), (2, 6)], "within tolerance, keep the heavy unit where it is"


def test_measured_costs_are_balanced_not_unit_counts() -> None:
    costs = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    ranges = balance_stages(costs, [1, 1])
    loads = [sum(costs[lo:hi]) for lo, hi in ranges]
    assert ranges[0] == (0, 1) and max(loads) == 5.0


def test_bad_stage_requests_say_what_is_wrong() -> None:
    with pytest.raises(StageBalanceError, match="cannot split 2 units into 3 stages"):
        balance_stages([1.0, 1.0], [1, 1, 1])
    with pytest.raises(StageBalanceError, match="at least one replica"):
        balance_stages([1.0, 1.0], [1, 0])


def test_moved_units_lists_stage_changes() -> None:
    assert moved_units([(0, 2), (2, 4)], [(0, 1), (1, 4)]) == [(1, 0, 1)]


def test_every_micro_batch_has_exactly_one_replica_per_stage() -> None:
    for total in range(1, 17):
        for degree in range(1, 6):
            seen = [mb for r in range(degree) for mb in micro_batches_of(total, degree, r)]
            assert seen == list(range(total))
            for r in range(degree):
                assert all(
                    replica_of(mb, total, degree) == r for mb in micro_batches_of(total, degree, r)
                )


def test_buddies_live_on_another_node() -> None:
    nodes = ["n0", "n0", "n1", "n1", "n2"]
    b = buddies(nodes)
    assert all(nodes[r] != nodes[b[r]] for r in range(len(nodes)))
    assert buddies(["n0", "n0"]) == [-1, -1]


def test_balancing_a_1024_worker_layout_is_fast() -> None:
    rng = random.Random(0)
    costs = [rng.uniform(0.8, 1.2) for _ in range(64)]
    degrees = [64] * 16  # 16 stages x 64 replicas = 1024 workers
    start = time.perf_counter()
    first = balance_stages(costs, degrees)
    degrees[5] -= 1  # one worker lost
    again = balance_stages(costs, degrees, current=first, unit_bytes=[1000] * 64)
    elapsed = time.perf_counter() - start
    assert len(again) == 16
    assert elapsed < 0.1, f"balancing took {elapsed * 1000:.1f} ms"


def test_stage_buddies_sit_on_the_next_stage_and_another_node() -> None:
    from elastiq.partition import stage_buddies

    nodes = [f"n{r}" for r in range(8)]
    stage_ranks = [[0, 1], [2, 3], [4, 5], [6, 7]]
    b = stage_buddies(nodes, stage_ranks)
    assert b == [2, 3, 4, 5, 6, 7, 0, 1]
    stage_of = {r: s for s, ranks in enumerate(stage_ranks) for r in ranks}
    assert all(stage_of[r] != stage_of[b[r]] for r in range(8))
    # one stage: any rank on another node
    assert stage_buddies(["a", "a", "b"], [[0, 1, 2]]) == [2, 2, 0]


def test_gradient_keepers_are_replicas_of_the_same_stage() -> None:
    from elastiq.partition import gradient_keepers, stage_buddies

    nodes = [f"n{r}" for r in range(8)]
    stage_ranks = [[0, 1], [2, 3], [4, 5], [6, 7]]
    keepers = gradient_keepers(nodes, stage_ranks, stage_buddies(nodes, stage_ranks))
    assert keepers == [1, 0, 3, 2, 5, 4, 7, 6]
    # a stage of one replica has no keeper; one of three keeps the next on another node
    nodes = ["a", "b", "b", "c"]
    assert gradient_keepers(nodes, [[0], [1, 2, 3]], [1, 0, 0, 0]) == [-1, 3, 3, 1]
    # data parallelism: the buddy is a replica already, and keeps it
    assert gradient_keepers(["a", "a", "b"], [[0, 1, 2]], [2, 2, 0]) == [2, 2, 0]


def test_the_predicted_step_of_equal_stages_is_the_1f1b_estimate() -> None:
    # 4 equal stages of 2 replicas, 16 micro-batches: (m + S - 1) t with m = 8, t = 2
    assert predicted_step_s([1.0] * 8, [(0, 2), (2, 4), (4, 6), (6, 8)], [2] * 4, 16) == 22.0


def test_a_third_replica_saves_only_what_the_micro_batch_split_allows() -> None:
    ranges = [(0, 2), (2, 4), (4, 6), (6, 8)]
    two = predicted_step_s([1.0] * 8, ranges, [2, 2, 2, 2], 16)
    three = predicted_step_s([1.0] * 8, ranges, [3, 2, 2, 2], 16)
    # stage 0's ranks run 6 of 16 micro-batches instead of 8, but stages 1-3 still run
    # 8: the step does not get shorter, which is why one extra worker in a 4-stage
    # pipeline of 8 equal layers cannot raise throughput
    assert three == two
    # moving a layer onto it makes it the slowest: 3 layers x 6 micro-batches
    fewer = predicted_step_s([1.0] * 8, [(0, 3), (3, 5), (5, 7), (7, 8)], [3, 2, 2, 2], 16)
    assert fewer == 3 * 6 + 2 + 2 + 1


def test_a_prediction_for_a_layout_that_does_not_fit_is_refused() -> None:
    with pytest.raises(StageBalanceError, match="stage ranges"):
        predicted_step_s([1.0] * 4, [(0, 2)], [1, 1], 8)
    with pytest.raises(StageBalanceError, match="micro_batches"):
        predicted_step_s([1.0] * 4, [(0, 4)], [1], 0)
