"""A chaos scenario: the job to run, the cluster to run it on, and the faults to inject.

Where it sits: `elastiq chaos run SCENARIO.yaml` and bench/soak.py parse one with
`Scenario.from_yaml` (typed and validated once, here) and hand it to
elastiq/chaos/runner.py. Pure: no processes, no I/O beyond reading the file.

A YAML scenario names the fields below; `job` holds JobConfig fields:

    job: {steps: 2000, checkpoint_every: 20, zero: 1}
    workers: 4
    controllers: 2          # a standby, so killing the leader is survivable
    store: etcd             # started for the run, so it can be restarted
    duration_s: 1200
    fault_every_s: 30
    faults: [kill-worker, kill-node, hang, kill-leader, restart-etcd,
             corrupt-checkpoint, kill-during-checkpoint, kill-during-reconfiguration]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from elastiq.config import JobConfig

FAULT_KINDS = (
    "kill-worker",
    "kill-node",
    "hang",
    "kill-leader",
    "restart-etcd",
    "corrupt-checkpoint",
    "kill-during-checkpoint",
    "kill-during-reconfiguration",
)
#: faults that need a checkpoint root, a standby controller, an etcd of the run's own
_NEEDS = {
    "corrupt-checkpoint": "checkpoints",
    "kill-during-checkpoint": "checkpoints",
    "kill-leader": "standby",
    "restart-etcd": "etcd",
}


@dataclass(kw_only=True, slots=True)
class Scenario:
    """What `elastiq chaos run` does, from start to summary."""

    job: dict[str, Any] = field(default_factory=dict)
    """JobConfig fields of the job under test (its name is set by the runner)."""
    workers: int = 4
    """Worker processes, all planned (no spares)."""
    workers_per_node: int = 1
    """Workers per agent process (node)."""
    controllers: int = 2
    """1, or 2: a standby that must take over when the leader is killed."""
    store: str = "etcd"
    """'etcd' (a server started for the run, so it can be restarted) or 'embedded'."""
    duration_s: float = 600.0
    """Inject faults for this long after the first plan; then let the job finish."""
    first_fault_s: float = 15.0
    """Seconds of undisturbed training before the first fault."""
    fault_every_s: float = 30.0
    """Seconds between faults."""
    faults: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    """Fault kinds, injected in this order, round and round."""
    etcd_outage_s: float = 5.0
    """How long restart-etcd keeps etcd down."""
    replace_after_s: float = 5.0
    """A killed node (agent) or controller is replaced after this long, as Kubernetes
    replaces a pod; killed workers are restarted by their agent (max_restarts)."""
    max_restarts: int = 1000
    """Worker restarts each agent allows per slot."""
    recovery_timeout_s: float = 90.0
    """A fault the job has not trained past within this long is not survived."""
    finish_timeout_s: float = 900.0
    """After the last fault, how long the job may take to reach its last step."""
    lease_ttl_s: float = 3.0
    """Node and leader lease TTL."""
    seed: int = 0
    """Seed of the victim choices (the same scenario picks the same victims)."""

    def __post_init__(self) -> None:
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be a {kinds[0].__name__}")
        if not all(isinstance(f, str) for f in self.faults):
            raise ValueError("faults must be a list of fault kinds")
        self.job_config()  # refuses unknown or invalid job fields now
        if self.workers < 1 or self.workers_per_node < 1 or self.workers % self.workers_per_node:
            raise ValueError("workers must be a positive multiple of workers_per_node")
        if self.controllers not in (1, 2):
            raise ValueError(f"controllers={self.controllers} must be 1 or 2")
        if self.store not in ("etcd", "embedded"):
            raise ValueError(f"store={self.store!r} must be 'etcd' or 'embedded'")
        if self.controllers == 2 and self.store != "etcd":
            raise ValueError("a standby controller needs store: etcd")
        if min(self.duration_s, self.fault_every_s, self.recovery_timeout_s) <= 0:
            raise ValueError("duration_s, fault_every_s and recovery_timeout_s must be positive")
        if self.first_fault_s < 0 or self.etcd_outage_s < 0 or self.replace_after_s < 0:
            raise ValueError("first_fault_s, etcd_outage_s and replace_after_s must be >= 0")
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown or not self.faults:
            raise ValueError(f"faults {unknown or '[]'}: use some of {list(FAULT_KINDS)}")
        job = self.job_config()
        have = {
            "checkpoints": bool(job.checkpoint_url and job.checkpoint_every),
            "standby": self.controllers == 2,
            "etcd": self.store == "etcd",
        }
        for kind in self.faults:
            need = _NEEDS.get(kind)
            if need is not None and not have[need]:
                raise ValueError(
                    f"fault {kind} needs {need}: set "
                    + {
                        "checkpoints": "job.checkpoint_url and job.checkpoint_every",
                        "standby": "controllers: 2",
                        "etcd": "store: etcd",
                    }[need]
                )
        if self.workers < 2 and any(f != "corrupt-checkpoint" for f in self.faults):
            raise ValueError("losing a worker needs at least 2 workers")

    def job_config(self) -> JobConfig:
        return JobConfig.from_dict({"job": "chaos", **self.job})

    @classmethod
    def from_yaml(cls, text: str, where: str = "scenario") -> Scenario:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{where}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be a mapping of scenario fields")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; known: {sorted(known)}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from exc


_TYPES: dict[str, tuple[type, ...]] = {
    "job": (dict,),
    "workers": (int,),
    "workers_per_node": (int,),
    "controllers": (int,),
    "store": (str,),
    "duration_s": (float, int),
    "first_fault_s": (float, int),
    "fault_every_s": (float, int),
    "faults": (list,),
    "etcd_outage_s": (float, int),
    "replace_after_s": (float, int),
    "max_restarts": (int,),
    "recovery_timeout_s": (float, int),
    "finish_timeout_s": (float, int),
    "lease_ttl_s": (float, int),
    "seed": (int,),
}
