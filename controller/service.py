"""The controller's gRPC service: authenticate, validate, then delegate to JobController.

Every request is checked before anything changes: a wrong token is
PERMISSION_DENIED; an unknown node id, a malformed id, an out-of-range rank or
slot count is INVALID_ARGUMENT with a message that says what was wrong; a report
from an older generation is accepted=False and logged. A standby controller (not
the leader) answers UNAVAILABLE so agents try the next address.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from elastiq import rpc
from elastiq.controller.job import JobController
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MAX_SLOTS = 1024


class ControllerService(rpc.ControllerServicerBase):
    def __init__(self, job: JobController | None = None) -> None:
        self.job = job
        self.leader_address = ""

    async def _leader(self, context: Any) -> JobController:
        if self.job is None:
            await rpc.reject(
                context,
                "UNAVAILABLE",
                f"this controller is a standby; the leader is {self.leader_address or '?'}",
            )
        return self.job

    async def _auth(self, job: JobController, token: str, context: Any) -> None:
        expected = job.config.token
        if expected and not hmac.compare_digest(token.encode(), expected.encode()):
            job.metrics.rejected.labels("token").inc()
            log.warning("rejected a request with a wrong job token")
            await rpc.reject(
                context,
                "PERMISSION_DENIED",
                "wrong job token: use the token the job was started with",
            )

    async def _node(self, job: JobController, node_id: str, context: Any) -> None:
        if node_id not in job.nodes:
            job.metrics.rejected.labels("unknown_node").inc()
            await rpc.reject(
                context,
                "INVALID_ARGUMENT",
                f"unknown node id {node_id!r}: register first (known: {sorted(job.nodes)})",
            )

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        job = await self._leader(context)
        await self._auth(job, request.token, context)
        if not _ID.match(request.node_id):
            await rpc.reject(
                context,
                "INVALID_ARGUMENT",
                f"node id {request.node_id!r} must be 1-128 characters of [A-Za-z0-9._:/-]",
            )
        if not 1 <= request.slots <= MAX_SLOTS:
            await rpc.reject(
                context, "INVALID_ARGUMENT", f"slots={request.slots} must be in 1..{MAX_SLOTS}"
            )
        if request.model.unit_numel:
            problem = _model_problem(request.model)
            if problem:
                await rpc.reject(context, "INVALID_ARGUMENT", f"{request.node_id}: {problem}")
        for w in request.workers:
            if not _ID.match(w.worker_id) or not 0 <= w.slot < request.slots:
                await rpc.reject(
                    context,
                    "INVALID_ARGUMENT",
                    f"worker {w.worker_id!r} slot {w.slot} is not valid for "
                    f"{request.slots} slot(s)",
                )
        try:
            return await job.register(request)
        except ValueError as exc:
            await rpc.reject(context, "FAILED_PRECONDITION", str(exc))

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        job = await self._leader(context)
        await self._auth(job, request.token, context)
        return await job.heartbeat(request)

    async def WatchPlan(
        self, request: pb.WatchPlanRequest, context: Any
    ) -> AsyncIterator[pb.Directive]:
        job = await self._leader(context)
        await self._auth(job, request.token, context)
        await self._node(job, request.node_id, context)
        queue = job.open_stream(request.node_id)
        try:
            while True:
                directive = await queue.get()
                yield directive
                if directive.WhichOneof("kind") == "shutdown":
                    # let the agent read it before the stream ends
                    await asyncio.sleep(0.5)
                    return
        finally:
            await job.close_stream(request.node_id, queue)

    async def ReportEvent(self, request: pb.EventReport, context: Any) -> pb.EventAck:
        job = await self._leader(context)
        await self._auth(job, request.token, context)
        await self._node(job, request.node_id, context)
        if request.kind == pb.EVENT_UNSPECIFIED:
            await rpc.reject(context, "INVALID_ARGUMENT", "event kind is missing")
        if request.kind != pb.CHAOS_INJECTED and not _ID.match(request.worker_id):
            await rpc.reject(
                context, "INVALID_ARGUMENT", f"worker id {request.worker_id!r} is malformed"
            )
        if request.generation < 0:
            await rpc.reject(
                context, "INVALID_ARGUMENT", f"generation {request.generation} is negative"
            )
        if request.kind == pb.WORKER_READY:
            problem = _model_problem(request.model)
            if problem:
                await rpc.reject(context, "INVALID_ARGUMENT", f"{request.worker_id}: {problem}")
        return await job.report(request.node_id, request)

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        job = await self._leader(context)
        await self._auth(job, request.token, context)
        return job.status()

    async def Admin(self, request: pb.AdminRequest, context: Any) -> pb.AdminResponse:
        job = await self._leader(context)
        await self._auth(job, request.token, context)
        if request.action == pb.CHAOS_UNSPECIFIED:
            await rpc.reject(context, "INVALID_ARGUMENT", "admin action is missing")
        if request.at_step < 0:
            await rpc.reject(context, "INVALID_ARGUMENT", f"at_step={request.at_step} must be >= 0")
        try:
            detail = job.inject_chaos(request)
        except ValueError as exc:
            await rpc.reject(context, "INVALID_ARGUMENT", str(exc))
        return pb.AdminResponse(accepted=True, detail=detail)


#: far above any model this runtime splits into units, far below what breaks planning
MAX_UNITS = 100_000
MAX_UNIT_NUMEL = 1 << 40


def _model_problem(model: pb.ModelShape) -> str:
    """Why a reported model shape cannot be planned with; empty if it can."""
    sizes = list(model.unit_numel)
    if not sizes:
        return "reports no model shape (ModelShape.unit_numel is empty)"
    if len(sizes) > MAX_UNITS:
        return f"reports {len(sizes)} layer units; at most {MAX_UNITS} are supported"
    bad = [n for n in sizes if not 0 < n <= MAX_UNIT_NUMEL]
    if bad:
        return f"reports layer units of {bad[:3]} parameters; each must be in 1..{MAX_UNIT_NUMEL}"
    return ""
