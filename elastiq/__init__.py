"""elastiq: elastic hybrid-parallel training that survives the loss of any worker.

The public API is small and imported lazily, so `import elastiq.controller` does
not pull torch and `import elastiq` stays cheap:

- `JobConfig`, `ModelConfig`: what to train.
- `run_local`: run a controller and agents on this machine (what `elastiq run` does).
- `UnitModel`, `token_cross_entropy`: what a model entry point returns (imports torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["JobConfig", "ModelConfig", "UnitModel", "run_local", "token_cross_entropy"]


def __getattr__(name: str) -> Any:
    if name in ("JobConfig", "ModelConfig"):
        from elastiq import config

        return getattr(config, name)
    if name in ("UnitModel", "token_cross_entropy"):
        from elastiq import model_api

        return getattr(model_api, name)
    if name == "run_local":
        from elastiq.cli.local_run import run_local

        return run_local
    raise AttributeError(f"module 'elastiq' has no attribute {name!r}")
