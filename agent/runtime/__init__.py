"""The worker runtime: the training process the node agent spawns, one per slot.

Where it sits: `elastiq.agent` (the node agent) starts `python -m
elastiq.agent.runtime.worker` and talks to it over a pipe (elastiq.agent.channel).
Everything here runs inside that worker process and may import torch; the node agent
and the controller never import this package. Models live in `models/`, datasets in
`data/`.
"""
