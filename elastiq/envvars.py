"""Every environment variable elastiq reads, in one place.

Precedence everywhere is: explicit argument > environment variable > default.
`resolve` is the one helper that applies it, so no module reads os.environ for a
setting on its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: controller address for agents, status and chaos (host:port)
CONTROLLER = "ELASTIQ_CONTROLLER"
#: the agent token (what an agent presents to Register); the token itself, not a path
AGENT_TOKEN = "ELASTIQ_AGENT_TOKEN"
#: the operator token (status, chaos, the Kubernetes operator)
OPERATOR_TOKEN = "ELASTIQ_OPERATOR_TOKEN"
#: store URL of the controller: "embedded", "embedded:///path/state.json", "etcd://host:port"
STORE = "ELASTIQ_STORE"
#: node id of an agent (defaults to hostname-pid)
NODE_ID = "ELASTIQ_NODE_ID"
#: log level name for the elastiq loggers
LOG_LEVEL = "ELASTIQ_LOG_LEVEL"
#: the Unix socket where an agent sidecar takes its pod's worker host (agent --worker-socket,
#: worker-host --socket)
AGENT_SOCKET = "ELASTIQ_AGENT_SOCKET"

ALL = (CONTROLLER, AGENT_TOKEN, OPERATOR_TOKEN, STORE, NODE_ID, LOG_LEVEL, AGENT_SOCKET)


def resolve(explicit: T | None, name: str, default: T, parse: Callable[[str], T]) -> T:
    """Return `explicit` if given, else the parsed variable `name` if set, else `default`."""
    if explicit is not None:
        return explicit
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is invalid: {exc}") from exc
