"""Point-to-point tags of the worker runtime, in one place.

gloo matches a receive to a send by (peer, tag), so two kinds of message that can be in
flight between the same two ranks at once must never share a tag. Each kind owns a
range:

- pipeline activations and gradients (agent/runtime/pipeline.py): 2*(mb*hops+h) (+1,
  +3), below `EDGE_COPIES` for any schedule this runtime builds;
- state moves at a join (agent/runtime/migrate.py): PIECES*move+piece, small numbers,
  but only while no step is in flight;
- the ranges below, far apart, for the transfers that overlap training or each other.
"""

from __future__ import annotations

EDGE_COPIES = 1 << 23
"""CheckFree+ copies of the embedding (+0) and head (+1)."""
SNAPSHOTS = 1 << 24
"""Buddy snapshots: + tensor index (parameters, two moments)."""
GRADIENT_HANDOFF = 3 << 23
"""Kept gradients handed over at a join: + 2*handoff (+1 for the tensor after its header)."""
FINAL_PARAMS = 1 << 25
"""Each stage's parameters sent to rank 0 at the end."""
