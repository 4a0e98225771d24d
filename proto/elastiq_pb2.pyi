from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_PHASE_UNSPECIFIED: _ClassVar[WorkerPhase]
    WORKER_PHASE_STARTING: _ClassVar[WorkerPhase]
    WORKER_PHASE_READY: _ClassVar[WorkerPhase]
    WORKER_PHASE_RUNNING: _ClassVar[WorkerPhase]
    WORKER_PHASE_FINISHED: _ClassVar[WorkerPhase]
    WORKER_PHASE_GONE: _ClassVar[WorkerPhase]

class ChaosAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAOS_UNSPECIFIED: _ClassVar[ChaosAction]
    KILL_WORKER: _ClassVar[ChaosAction]
    KILL_NODE: _ClassVar[ChaosAction]
    HANG_WORKER: _ClassVar[ChaosAction]
    KILL_BEFORE_SNAPSHOT: _ClassVar[ChaosAction]

class JobPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_PHASE_UNSPECIFIED: _ClassVar[JobPhase]
    JOB_PENDING: _ClassVar[JobPhase]
    JOB_RUNNING: _ClassVar[JobPhase]
    JOB_RECOVERING: _ClassVar[JobPhase]
    JOB_SUCCEEDED: _ClassVar[JobPhase]
    JOB_FAILED: _ClassVar[JobPhase]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_UNSPECIFIED: _ClassVar[EventKind]
    WORKER_READY: _ClassVar[EventKind]
    WORKER_EXITED: _ClassVar[EventKind]
    WORKER_HUNG: _ClassVar[EventKind]
    COLLECTIVE_ERROR: _ClassVar[EventKind]
    JOINED: _ClassVar[EventKind]
    FINISHED: _ClassVar[EventKind]
    CHAOS_INJECTED: _ClassVar[EventKind]
    WORKER_FAILED: _ClassVar[EventKind]
    RESUMED: _ClassVar[EventKind]
    START_FAILED: _ClassVar[EventKind]
    WORKER_RESTARTING: _ClassVar[EventKind]
WORKER_PHASE_UNSPECIFIED: WorkerPhase
WORKER_PHASE_STARTING: WorkerPhase
WORKER_PHASE_READY: WorkerPhase
WORKER_PHASE_RUNNING: WorkerPhase
WORKER_PHASE_FINISHED: WorkerPhase
WORKER_PHASE_GONE: WorkerPhase
CHAOS_UNSPECIFIED: ChaosAction
KILL_WORKER: ChaosAction
KILL_NODE: ChaosAction
HANG_WORKER: ChaosAction
KILL_BEFORE_SNAPSHOT: ChaosAction
JOB_PHASE_UNSPECIFIED: JobPhase
JOB_PENDING: JobPhase
JOB_RUNNING: JobPhase
JOB_RECOVERING: JobPhase
JOB_SUCCEEDED: JobPhase
JOB_FAILED: JobPhase
EVENT_UNSPECIFIED: EventKind
WORKER_READY: EventKind
WORKER_EXITED: EventKind
WORKER_HUNG: EventKind
COLLECTIVE_ERROR: EventKind
JOINED: EventKind
FINISHED: EventKind
CHAOS_INJECTED: EventKind
WORKER_FAILED: EventKind
RESUMED: EventKind
START_FAILED: EventKind
WORKER_RESTARTING: EventKind

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "slot", "pid", "phase", "generation", "step")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    slot: int
    pid: int
    phase: WorkerPhase
    generation: int
    step: int
    def __init__(self, worker_id: _Optional[str] = ..., slot: _Optional[int] = ..., pid: _Optional[int] = ..., phase: _Optional[_Union[WorkerPhase, str]] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class ModelShape(_message.Message):
    __slots__ = ("unit_numel",)
    UNIT_NUMEL_FIELD_NUMBER: _ClassVar[int]
    unit_numel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, unit_numel: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("token", "node_id", "slots", "address", "workers", "model", "node_secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    token: str
    node_id: str
    slots: int
    address: str
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    model: ModelShape
    node_secret: str
    def __init__(self, token: _Optional[str] = ..., node_id: _Optional[str] = ..., slots: _Optional[int] = ..., address: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., model: _Optional[_Union[ModelShape, _Mapping]] = ..., node_secret: _Optional[str] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("address", "slots", "secret_sha256")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    address: str
    slots: int
    secret_sha256: bytes
    def __init__(self, address: _Optional[str] = ..., slots: _Optional[int] = ..., secret_sha256: _Optional[bytes] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("lease_id", "lease_ttl_s", "heartbeat_interval_s", "config_json", "generation", "job", "node_secret")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    lease_ttl_s: float
    heartbeat_interval_s: float
    config_json: str
    generation: int
    job: str
    node_secret: str
    def __init__(self, lease_id: _Optional[int] = ..., lease_ttl_s: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ..., config_json: _Optional[str] = ..., generation: _Optional[int] = ..., job: _Optional[str] = ..., node_secret: _Optional[str] = ...) -> None: ...

class WorkerProgress(_message.Message):
    __slots__ = ("worker_id", "rank", "generation", "step", "loss", "tokens_per_s", "step_time_s", "wall_time", "phase", "unit_costs", "checkpoint_held_s", "checkpoint_committed_step", "checkpoints_skipped")
    class UnitCostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    UNIT_COSTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_HELD_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    rank: int
    generation: int
    step: int
    loss: float
    tokens_per_s: float
    step_time_s: float
    wall_time: float
    phase: WorkerPhase
    unit_costs: _containers.ScalarMap[int, float]
    checkpoint_held_s: float
    checkpoint_committed_step: int
    checkpoints_skipped: int
    def __init__(self, worker_id: _Optional[str] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ..., loss: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., step_time_s: _Optional[float] = ..., wall_time: _Optional[float] = ..., phase: _Optional[_Union[WorkerPhase, str]] = ..., unit_costs: _Optional[_Mapping[int, float]] = ..., checkpoint_held_s: _Optional[float] = ..., checkpoint_committed_step: _Optional[int] = ..., checkpoints_skipped: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_secret", "node_id", "lease_id", "progress")
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    node_secret: str
    node_id: str
    lease_id: int
    progress: _containers.RepeatedCompositeFieldContainer[WorkerProgress]
    def __init__(self, node_secret: _Optional[str] = ..., node_id: _Optional[str] = ..., lease_id: _Optional[int] = ..., progress: _Optional[_Iterable[_Union[WorkerProgress, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("generation", "known", "heartbeat_interval_s")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    generation: int
    known: bool
    heartbeat_interval_s: float
    def __init__(self, generation: _Optional[int] = ..., known: _Optional[bool] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class WatchPlanRequest(_message.Message):
    __slots__ = ("node_secret", "node_id")
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_secret: str
    node_id: str
    def __init__(self, node_secret: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("rank", "worker_id", "node_id", "slot", "holder")
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    rank: int
    worker_id: str
    node_id: str
    slot: int
    holder: bool
    def __init__(self, rank: _Optional[int] = ..., worker_id: _Optional[str] = ..., node_id: _Optional[str] = ..., slot: _Optional[int] = ..., holder: _Optional[bool] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("unit_lo", "unit_hi", "ranks", "source")
    UNIT_LO_FIELD_NUMBER: _ClassVar[int]
    UNIT_HI_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    unit_lo: int
    unit_hi: int
    ranks: _containers.RepeatedScalarFieldContainer[int]
    source: str
    def __init__(self, unit_lo: _Optional[int] = ..., unit_hi: _Optional[int] = ..., ranks: _Optional[_Iterable[int]] = ..., source: _Optional[str] = ...) -> None: ...

class StateMove(_message.Message):
    __slots__ = ("what", "src_rank", "dst_rank", "lo", "hi", "via")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    SRC_RANK_FIELD_NUMBER: _ClassVar[int]
    DST_RANK_FIELD_NUMBER: _ClassVar[int]
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    what: str
    src_rank: int
    dst_rank: int
    lo: int
    hi: int
    via: str
    def __init__(self, what: _Optional[str] = ..., src_rank: _Optional[int] = ..., dst_rank: _Optional[int] = ..., lo: _Optional[int] = ..., hi: _Optional[int] = ..., via: _Optional[str] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("job", "generation", "rendezvous", "world_size", "assignments", "moves", "abort_in_flight", "reason", "created_unix", "state_source", "stages", "zero", "buddy", "source_generation", "checkpoint_step", "checkfree_lo", "checkfree_hi", "checkfree_prev_rank", "checkfree_next_rank", "lr_scaled_units", "lr_scale", "swap_first", "swap_last", "checkfree_copies", "unit_numel")
    JOB_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    ABORT_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ZERO_FIELD_NUMBER: _ClassVar[int]
    BUDDY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKFREE_LO_FIELD_NUMBER: _ClassVar[int]
    CHECKFREE_HI_FIELD_NUMBER: _ClassVar[int]
    CHECKFREE_PREV_RANK_FIELD_NUMBER: _ClassVar[int]
    CHECKFREE_NEXT_RANK_FIELD_NUMBER: _ClassVar[int]
    LR_SCALED_UNITS_FIELD_NUMBER: _ClassVar[int]
    LR_SCALE_FIELD_NUMBER: _ClassVar[int]
    SWAP_FIRST_FIELD_NUMBER: _ClassVar[int]
    SWAP_LAST_FIELD_NUMBER: _ClassVar[int]
    CHECKFREE_COPIES_FIELD_NUMBER: _ClassVar[int]
    UNIT_NUMEL_FIELD_NUMBER: _ClassVar[int]
    job: str
    generation: int
    rendezvous: str
    world_size: int
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    moves: _containers.RepeatedCompositeFieldContainer[StateMove]
    abort_in_flight: bool
    reason: str
    created_unix: float
    state_source: str
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    zero: int
    buddy: _containers.RepeatedScalarFieldContainer[int]
    source_generation: int
    checkpoint_step: int
    checkfree_lo: int
    checkfree_hi: int
    checkfree_prev_rank: int
    checkfree_next_rank: int
    lr_scaled_units: _containers.RepeatedScalarFieldContainer[int]
    lr_scale: float
    swap_first: int
    swap_last: int
    checkfree_copies: _containers.RepeatedCompositeFieldContainer[CheckFreeCopy]
    unit_numel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job: _Optional[str] = ..., generation: _Optional[int] = ..., rendezvous: _Optional[str] = ..., world_size: _Optional[int] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., moves: _Optional[_Iterable[_Union[StateMove, _Mapping]]] = ..., abort_in_flight: _Optional[bool] = ..., reason: _Optional[str] = ..., created_unix: _Optional[float] = ..., state_source: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., zero: _Optional[int] = ..., buddy: _Optional[_Iterable[int]] = ..., source_generation: _Optional[int] = ..., checkpoint_step: _Optional[int] = ..., checkfree_lo: _Optional[int] = ..., checkfree_hi: _Optional[int] = ..., checkfree_prev_rank: _Optional[int] = ..., checkfree_next_rank: _Optional[int] = ..., lr_scaled_units: _Optional[_Iterable[int]] = ..., lr_scale: _Optional[float] = ..., swap_first: _Optional[int] = ..., swap_last: _Optional[int] = ..., checkfree_copies: _Optional[_Iterable[_Union[CheckFreeCopy, _Mapping]]] = ..., unit_numel: _Optional[_Iterable[int]] = ...) -> None: ...

class CheckFreeCopy(_message.Message):
    __slots__ = ("unit", "src_unit", "src_rank")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SRC_UNIT_FIELD_NUMBER: _ClassVar[int]
    SRC_RANK_FIELD_NUMBER: _ClassVar[int]
    unit: int
    src_unit: int
    src_rank: int
    def __init__(self, unit: _Optional[int] = ..., src_unit: _Optional[int] = ..., src_rank: _Optional[int] = ...) -> None: ...

class ChaosCommand(_message.Message):
    __slots__ = ("action", "worker_id", "rank", "at_step", "id", "at_generation")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    AT_STEP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    action: ChaosAction
    worker_id: str
    rank: int
    at_step: int
    id: str
    at_generation: int
    def __init__(self, action: _Optional[_Union[ChaosAction, str]] = ..., worker_id: _Optional[str] = ..., rank: _Optional[int] = ..., at_step: _Optional[int] = ..., id: _Optional[str] = ..., at_generation: _Optional[int] = ...) -> None: ...

class Directive(_message.Message):
    __slots__ = ("plan", "chaos", "shutdown", "plan_delta")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CHAOS_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    PLAN_DELTA_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    chaos: ChaosCommand
    shutdown: JobPhase
    plan_delta: PlanDelta
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., chaos: _Optional[_Union[ChaosCommand, _Mapping]] = ..., shutdown: _Optional[_Union[JobPhase, str]] = ..., plan_delta: _Optional[_Union[PlanDelta, _Mapping]] = ...) -> None: ...

class PlanDelta(_message.Message):
    __slots__ = ("base_generation", "plan", "runs", "stage_ranks", "buddy")
    BASE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    STAGE_RANKS_FIELD_NUMBER: _ClassVar[int]
    BUDDY_FIELD_NUMBER: _ClassVar[int]
    base_generation: int
    plan: Plan
    runs: _containers.RepeatedCompositeFieldContainer[AssignmentRun]
    stage_ranks: _containers.RepeatedCompositeFieldContainer[Progressions]
    buddy: Progressions
    def __init__(self, base_generation: _Optional[int] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., runs: _Optional[_Iterable[_Union[AssignmentRun, _Mapping]]] = ..., stage_ranks: _Optional[_Iterable[_Union[Progressions, _Mapping]]] = ..., buddy: _Optional[_Union[Progressions, _Mapping]] = ...) -> None: ...

class Progressions(_message.Message):
    __slots__ = ("start", "step", "count", "repeat")
    START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    start: _containers.RepeatedScalarFieldContainer[int]
    step: _containers.RepeatedScalarFieldContainer[int]
    count: _containers.RepeatedScalarFieldContainer[int]
    repeat: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, start: _Optional[_Iterable[int]] = ..., step: _Optional[_Iterable[int]] = ..., count: _Optional[_Iterable[int]] = ..., repeat: _Optional[_Iterable[int]] = ...) -> None: ...

class AssignmentRun(_message.Message):
    __slots__ = ("rank", "base_rank", "count", "holder")
    RANK_FIELD_NUMBER: _ClassVar[int]
    BASE_RANK_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    rank: int
    base_rank: int
    count: int
    holder: bool
    def __init__(self, rank: _Optional[int] = ..., base_rank: _Optional[int] = ..., count: _Optional[int] = ..., holder: _Optional[bool] = ...) -> None: ...

class JoinTimings(_message.Message):
    __slots__ = ("join_start", "comm_rebuild_s", "migrate_s", "reached_step")
    JOIN_START_FIELD_NUMBER: _ClassVar[int]
    COMM_REBUILD_S_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_S_FIELD_NUMBER: _ClassVar[int]
    REACHED_STEP_FIELD_NUMBER: _ClassVar[int]
    join_start: float
    comm_rebuild_s: float
    migrate_s: float
    reached_step: int
    def __init__(self, join_start: _Optional[float] = ..., comm_rebuild_s: _Optional[float] = ..., migrate_s: _Optional[float] = ..., reached_step: _Optional[int] = ...) -> None: ...

class EventReport(_message.Message):
    __slots__ = ("node_secret", "node_id", "generation", "kind", "worker_id", "rank", "step", "wall_time", "detail", "slot", "pid", "loss", "join", "model")
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    node_secret: str
    node_id: str
    generation: int
    kind: EventKind
    worker_id: str
    rank: int
    step: int
    wall_time: float
    detail: str
    slot: int
    pid: int
    loss: float
    join: JoinTimings
    model: ModelShape
    def __init__(self, node_secret: _Optional[str] = ..., node_id: _Optional[str] = ..., generation: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., worker_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., wall_time: _Optional[float] = ..., detail: _Optional[str] = ..., slot: _Optional[int] = ..., pid: _Optional[int] = ..., loss: _Optional[float] = ..., join: _Optional[_Union[JoinTimings, _Mapping]] = ..., model: _Optional[_Union[ModelShape, _Mapping]] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("node_secret", "node_id", "reports")
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    node_secret: str
    node_id: str
    reports: _containers.RepeatedCompositeFieldContainer[EventReport]
    def __init__(self, node_secret: _Optional[str] = ..., node_id: _Optional[str] = ..., reports: _Optional[_Iterable[_Union[EventReport, _Mapping]]] = ...) -> None: ...

class EventAcks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EventAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[EventAck, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("worker_id", "node_id", "rank", "step", "loss", "state", "pid")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    node_id: str
    rank: int
    step: int
    loss: float
    state: str
    pid: int
    def __init__(self, worker_id: _Optional[str] = ..., node_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., loss: _Optional[float] = ..., state: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("wall_time", "generation", "kind", "message")
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    wall_time: float
    generation: int
    kind: str
    message: str
    def __init__(self, wall_time: _Optional[float] = ..., generation: _Optional[int] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Recovery(_message.Message):
    __slots__ = ("generation", "cause", "failure_time", "resumed_time", "lost_steps", "phases")
    class PhasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESUMED_TIME_FIELD_NUMBER: _ClassVar[int]
    LOST_STEPS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    cause: str
    failure_time: float
    resumed_time: float
    lost_steps: int
    phases: _containers.ScalarMap[str, float]
    def __init__(self, generation: _Optional[int] = ..., cause: _Optional[str] = ..., failure_time: _Optional[float] = ..., resumed_time: _Optional[float] = ..., lost_steps: _Optional[int] = ..., phases: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("job", "phase", "generation", "members", "plan", "events", "step", "loss", "tokens_per_s", "failures", "recoveries", "leader", "total_steps", "first_loss", "checkpoint_step", "waiting_for", "unit_costs_s")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    RECOVERIES_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    FIRST_LOSS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    UNIT_COSTS_S_FIELD_NUMBER: _ClassVar[int]
    job: str
    phase: JobPhase
    generation: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    plan: Plan
    events: _containers.RepeatedCompositeFieldContainer[Event]
    step: int
    loss: float
    tokens_per_s: float
    failures: int
    recoveries: _containers.RepeatedCompositeFieldContainer[Recovery]
    leader: str
    total_steps: int
    first_loss: float
    checkpoint_step: int
    waiting_for: str
    unit_costs_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, job: _Optional[str] = ..., phase: _Optional[_Union[JobPhase, str]] = ..., generation: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., step: _Optional[int] = ..., loss: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., failures: _Optional[int] = ..., recoveries: _Optional[_Iterable[_Union[Recovery, _Mapping]]] = ..., leader: _Optional[str] = ..., total_steps: _Optional[int] = ..., first_loss: _Optional[float] = ..., checkpoint_step: _Optional[int] = ..., waiting_for: _Optional[str] = ..., unit_costs_s: _Optional[_Iterable[float]] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("token", "action", "rank", "node_id", "at_step", "at_generation")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AT_STEP_FIELD_NUMBER: _ClassVar[int]
    AT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    token: str
    action: ChaosAction
    rank: int
    node_id: str
    at_step: int
    at_generation: int
    def __init__(self, token: _Optional[str] = ..., action: _Optional[_Union[ChaosAction, str]] = ..., rank: _Optional[int] = ..., node_id: _Optional[str] = ..., at_step: _Optional[int] = ..., at_generation: _Optional[int] = ...) -> None: ...

class AdminResponse(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class WorkerConfig(_message.Message):
    __slots__ = ("config_json", "worker_id", "node_id", "log_level")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    worker_id: str
    node_id: str
    log_level: str
    def __init__(self, config_json: _Optional[str] = ..., worker_id: _Optional[str] = ..., node_id: _Optional[str] = ..., log_level: _Optional[str] = ...) -> None: ...

class ArmChaos(_message.Message):
    __slots__ = ("die_after_update_of",)
    DIE_AFTER_UPDATE_OF_FIELD_NUMBER: _ClassVar[int]
    die_after_update_of: int
    def __init__(self, die_after_update_of: _Optional[int] = ...) -> None: ...

class ToWorker(_message.Message):
    __slots__ = ("config", "plan", "chaos", "shutdown")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CHAOS_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    config: WorkerConfig
    plan: Plan
    chaos: ArmChaos
    shutdown: bool
    def __init__(self, config: _Optional[_Union[WorkerConfig, _Mapping]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., chaos: _Optional[_Union[ArmChaos, _Mapping]] = ..., shutdown: _Optional[bool] = ...) -> None: ...

class WorkerReady(_message.Message):
    __slots__ = ("pid", "model")
    PID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    pid: int
    model: ModelShape
    def __init__(self, pid: _Optional[int] = ..., model: _Optional[_Union[ModelShape, _Mapping]] = ...) -> None: ...

class WorkerAlive(_message.Message):
    __slots__ = ("wall_time",)
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    wall_time: float
    def __init__(self, wall_time: _Optional[float] = ...) -> None: ...

class StepDone(_message.Message):
    __slots__ = ("step", "generation", "rank", "loss", "wall_time", "step_time_s", "tokens_per_s", "first_in_generation", "unit_costs", "checkpoint_held_s", "checkpoint_committed_step", "checkpoints_skipped")
    class UnitCostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_IN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    UNIT_COSTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_HELD_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    step: int
    generation: int
    rank: int
    loss: float
    wall_time: float
    step_time_s: float
    tokens_per_s: float
    first_in_generation: bool
    unit_costs: _containers.ScalarMap[int, float]
    checkpoint_held_s: float
    checkpoint_committed_step: int
    checkpoints_skipped: int
    def __init__(self, step: _Optional[int] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., loss: _Optional[float] = ..., wall_time: _Optional[float] = ..., step_time_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., first_in_generation: _Optional[bool] = ..., unit_costs: _Optional[_Mapping[int, float]] = ..., checkpoint_held_s: _Optional[float] = ..., checkpoint_committed_step: _Optional[int] = ..., checkpoints_skipped: _Optional[int] = ...) -> None: ...

class JoinDone(_message.Message):
    __slots__ = ("generation", "rank", "committed_step", "timings", "moved_bytes", "rolled_back")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MOVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rank: int
    committed_step: int
    timings: JoinTimings
    moved_bytes: int
    rolled_back: bool
    def __init__(self, generation: _Optional[int] = ..., rank: _Optional[int] = ..., committed_step: _Optional[int] = ..., timings: _Optional[_Union[JoinTimings, _Mapping]] = ..., moved_bytes: _Optional[int] = ..., rolled_back: _Optional[bool] = ...) -> None: ...

class WorkerProblem(_message.Message):
    __slots__ = ("generation", "rank", "step", "detail")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rank: int
    step: int
    detail: str
    def __init__(self, generation: _Optional[int] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ChaosFired(_message.Message):
    __slots__ = ("step", "wall_time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    step: int
    wall_time: float
    def __init__(self, step: _Optional[int] = ..., wall_time: _Optional[float] = ...) -> None: ...

class WorkerFinished(_message.Message):
    __slots__ = ("step", "generation", "wall_time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    step: int
    generation: int
    wall_time: float
    def __init__(self, step: _Optional[int] = ..., generation: _Optional[int] = ..., wall_time: _Optional[float] = ...) -> None: ...

class FromWorker(_message.Message):
    __slots__ = ("ready", "alive", "step", "joined", "interrupted", "state_lost", "chaos_fired", "finished", "start_failed")
    READY_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    STATE_LOST_FIELD_NUMBER: _ClassVar[int]
    CHAOS_FIRED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    START_FAILED_FIELD_NUMBER: _ClassVar[int]
    ready: WorkerReady
    alive: WorkerAlive
    step: StepDone
    joined: JoinDone
    interrupted: WorkerProblem
    state_lost: WorkerProblem
    chaos_fired: ChaosFired
    finished: WorkerFinished
    start_failed: WorkerProblem
    def __init__(self, ready: _Optional[_Union[WorkerReady, _Mapping]] = ..., alive: _Optional[_Union[WorkerAlive, _Mapping]] = ..., step: _Optional[_Union[StepDone, _Mapping]] = ..., joined: _Optional[_Union[JoinDone, _Mapping]] = ..., interrupted: _Optional[_Union[WorkerProblem, _Mapping]] = ..., state_lost: _Optional[_Union[WorkerProblem, _Mapping]] = ..., chaos_fired: _Optional[_Union[ChaosFired, _Mapping]] = ..., finished: _Optional[_Union[WorkerFinished, _Mapping]] = ..., start_failed: _Optional[_Union[WorkerProblem, _Mapping]] = ...) -> None: ...

class ToHost(_message.Message):
    __slots__ = ("start", "signal", "exit")
    START_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    start: StartWorker
    signal: SignalWorker
    exit: int
    def __init__(self, start: _Optional[_Union[StartWorker, _Mapping]] = ..., signal: _Optional[_Union[SignalWorker, _Mapping]] = ..., exit: _Optional[int] = ...) -> None: ...

class StartWorker(_message.Message):
    __slots__ = ("worker_id", "slot")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    slot: int
    def __init__(self, worker_id: _Optional[str] = ..., slot: _Optional[int] = ...) -> None: ...

class SignalWorker(_message.Message):
    __slots__ = ("worker_id", "signal")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    signal: int
    def __init__(self, worker_id: _Optional[str] = ..., signal: _Optional[int] = ...) -> None: ...

class FromHost(_message.Message):
    __slots__ = ("hello", "started", "exited")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    hello: int
    started: WorkerStarted
    exited: WorkerExited
    def __init__(self, hello: _Optional[int] = ..., started: _Optional[_Union[WorkerStarted, _Mapping]] = ..., exited: _Optional[_Union[WorkerExited, _Mapping]] = ...) -> None: ...

class WorkerStarted(_message.Message):
    __slots__ = ("worker_id", "pid")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pid: int
    def __init__(self, worker_id: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class WorkerExited(_message.Message):
    __slots__ = ("worker_id", "code")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    code: int
    def __init__(self, worker_id: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...
