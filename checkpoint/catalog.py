"""Which checkpoints exist under a root, which are committed, and retention.

Storage-facing but policy-free: a checkpoint directory is visible only when its
COMMITTED marker exists (written last by the engine). Retention keeps the newest
`keep` committed checkpoints and collects partial directories older than the
newest committed one (a partial *newer* one may still be in flight).
"""

from __future__ import annotations

import logging

from elastiq import fs
from elastiq.checkpoint.manifest import COMMITTED, parse_step_dir, step_dir

log = logging.getLogger(__name__)


def part_name(rank: int) -> str:
    return f"part-{rank:05d}.json"


def steps(url: str) -> list[int]:
    """Steps of every checkpoint directory under `url`, committed or not, ascending."""
    found = (parse_step_dir(n) for n in fs.list_names(url))
    return sorted(s for s in found if s is not None)


def committed(url: str) -> list[int]:
    """Steps of the committed checkpoints under `url`, ascending."""
    return [s for s in steps(url) if fs.exists(fs.join(url, step_dir(s), COMMITTED))]


def collect(url: str, keep: int, local_dir: str = "") -> list[int]:
    """Delete committed checkpoints beyond the newest `keep` and partial ones older
    than the newest committed; returns the steps deleted."""
    done = committed(url)
    if not done:
        return []
    kept = set(done[-keep:])
    doomed = [s for s in steps(url) if s not in kept and s < done[-1]]
    for s in doomed:
        # the marker goes first: a reader never sees a committed, half-deleted checkpoint
        marker = fs.join(url, step_dir(s), COMMITTED)
        if fs.exists(marker):
            fs.remove_tree(marker)
        fs.remove_tree(fs.join(url, step_dir(s)))
        if local_dir:
            fs.remove_tree(fs.join(local_dir, step_dir(s)))
    if doomed:
        log.info("retention removed checkpoints of steps %s under %s", doomed, url)
    return doomed


def prune_local(local_dir: str, keep: int) -> None:
    """A node-local tier holds only this node's files: keep its newest `keep` steps
    (it is a cache of the root; retention on the root is rank 0's job)."""
    for s in steps(local_dir)[:-keep]:
        fs.remove_tree(fs.join(local_dir, step_dir(s)))
