"""Logging helpers: every elastiq log line carries job, generation, node, rank and step.

Modules log through `logging.getLogger(__name__)`; `context` holds the values the
`ContextFilter` stamps onto each record, so call sites do not repeat them. Each process
sets what it knows: the controller its job and generation, an agent its job, node and
the generation it relays, a worker all five.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass


@dataclass(slots=True)
class LogContext:
    job: str = "-"
    generation: int = 0
    node: str = "-"
    rank: int = -1
    step: int = -1
    role: str = "-"


context = LogContext()


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = context.job
        record.generation = context.generation
        record.node = context.node
        record.rank = context.rank
        record.step = context.step
        record.role = context.role
        return True


FORMAT = (
    "%(asctime)s %(levelname)s %(role)s job=%(job)s gen=%(generation)d node=%(node)s "
    "rank=%(rank)d "
    "step=%(step)d %(name)s: %(message)s"
)


def setup(level: str = "INFO", role: str = "-") -> None:
    """Configure the `elastiq` logger tree (not the root logger) for a process."""
    context.role = role
    logger = logging.getLogger("elastiq")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_elastiq", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(ContextFilter())
        handler._elastiq = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
