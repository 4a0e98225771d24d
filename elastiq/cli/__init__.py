"""The front end: the `elastiq` command line and the local runner behind `elastiq run`.

Where it sits: on top of everything else; nothing outside this package imports it
(tests/test_contracts.py). `main` parses flags generated from the config dataclasses
(flags.py) and hands validated configs to the part that does the work: the local
runner (local_run.py), the controller, the node agent, or the checkpoint tools
(ckpt.py). Progress bars, events and summaries are views of their own.
"""

from __future__ import annotations

from elastiq.cli.main import main

__all__ = ["main"]
