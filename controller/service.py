"""The controller's gRPC service: authenticate, validate, then delegate to JobController.

Every request is authenticated first (a standby reveals nothing, not even the
leader's address, to a caller without a valid credential), then every field is
checked (controller/request_checks.py), and only then does anything change. Three
credentials, each compared in constant time:

- the agent token: Register only;
- the node secret Register issues: Heartbeat, WatchPlan, ReportEvent for that node
  (an agent can act for its own node only);
- the operator token: Status and Admin (an agent cannot inject chaos or read the job).

A standby controller (not the leader) answers UNAVAILABLE so agents try the next
address. The status codes are listed in the proto's contract.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from elastiq import rpc
from elastiq.controller import request_checks as checks
from elastiq.controller.job import JobController
from elastiq.controller.job_state import NodeState
from elastiq.controller.store import StoreError
from elastiq.proto import elastiq_pb2 as pb

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Credentials:
    """The two tokens a controller checks (node secrets are issued by it)."""

    agent_token: str = ""
    """What an agent presents to Register."""
    operator_token: str = ""
    """What `elastiq status`, `elastiq chaos` and the operator present."""
    insecure: bool = False
    """Accept calls without credentials (empty tokens only): never the default."""

    def __post_init__(self) -> None:
        if not self.insecure and not (self.agent_token and self.operator_token):
            raise ValueError(
                "the controller needs an agent token and an operator token (from a file or "
                "the environment); to run without any, say so with --insecure"
            )
        for name in ("agent_token", "operator_token"):
            token = getattr(self, name)
            if token and len(token) < 16:
                raise ValueError(f"{name} is {len(token)} characters; use at least 16")
        if self.agent_token and self.agent_token == self.operator_token:
            raise ValueError("the agent token and the operator token must differ")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class ControllerService(rpc.ControllerServicerBase):
    def __init__(self, credentials: Credentials, job: JobController | None = None) -> None:
        self.credentials = credentials
        self.job = job
        self.leader_address = ""

    # authentication -------------------------------------------------------------------
    async def _token(self, given: str, expected: str, who: str, context: Any) -> None:
        if self.credentials.insecure and not expected:
            return
        if not given:
            await self._deny(context, "UNAUTHENTICATED", f"this call needs the {who} token")
        if not _same(given, expected):
            await self._deny(context, "PERMISSION_DENIED", f"wrong {who} token")

    async def _deny(self, context: Any, code: str, message: str) -> None:
        if self.job is not None:
            self.job.metrics.rejected.labels("token").inc()
        log.warning("refused a request: %s", message)
        await rpc.reject(context, code, message)

    async def _leader(self, context: Any, *, authenticated: bool = True) -> JobController:
        """The job, if this controller leads; the leader's address only goes to a caller
        that has already presented a valid token."""
        if self.job is None:
            where = f"; the leader is {self.leader_address or '?'}" if authenticated else ""
            await rpc.reject(context, "UNAVAILABLE", f"this controller is a standby{where}")
        return self.job

    async def _node(
        self, node_id: str, secret: str, context: Any
    ) -> tuple[JobController, NodeState]:
        """The leader and the node `secret` belongs to; refuses a wrong secret."""
        job = await self._leader(context, authenticated=False)
        node = job.nodes.get(node_id)
        if node is None:
            job.metrics.rejected.labels("unknown_node").inc()
            await rpc.reject(
                context,
                "INVALID_ARGUMENT",
                f"unknown node id {node_id[:80]!r}: register first",
            )
        if not _same(secret, node.secret):
            await self._deny(context, "PERMISSION_DENIED", f"wrong secret for node {node_id!r}")
        return job, node

    async def _checked(self, context: Any, check: Callable[[], None]) -> None:
        try:
            check()
        except checks.Refusal as refusal:
            if self.job is not None:
                self.job.metrics.rejected.labels("invalid").inc()
            await rpc.reject(context, refusal.code, refusal.message)

    async def _change(self, context: Any, change: Awaitable[T]) -> T:
        """Run a state change; a ValueError is the job's refusal (nothing changed), a
        store error is UNAVAILABLE (retry), anything else INTERNAL, never UNKNOWN."""
        try:
            return await change
        except checks.Refusal as refusal:
            await rpc.reject(context, refusal.code, refusal.message)
        except ValueError as exc:
            await rpc.reject(context, "FAILED_PRECONDITION", str(exc))
        except StoreError as exc:
            await rpc.reject(context, "UNAVAILABLE", f"the job's store is unavailable: {exc}")
        except Exception as exc:
            if rpc.is_abort(exc):
                raise
            log.exception("internal error in a request handler")
            await rpc.reject(context, "INTERNAL", f"internal error: {exc!r}"[:500])

    @staticmethod
    def _limits(job: JobController) -> checks.JobLimits:
        return checks.JobLimits(
            total_steps=job.job.steps, generation=job.generation, units=job.planner.units
        )

    # the RPCs -------------------------------------------------------------------------
    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        await self._token(request.token, self.credentials.agent_token, "agent", context)
        job = await self._leader(context)
        await self._checked(context, lambda: checks.check_register(request))
        return await self._change(context, job.register(request))

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        job = await self._leader(context, authenticated=False)
        if request.node_id not in job.nodes:  # lease expired or a new leader: register again
            return pb.HeartbeatResponse(generation=job.generation, known=False)
        job, node = await self._node(request.node_id, request.node_secret, context)
        limits = self._limits(job)
        await self._checked(context, lambda: checks.check_heartbeat(request, node.slots, limits))
        return await self._change(context, job.heartbeat(request))

    async def WatchPlan(
        self, request: pb.WatchPlanRequest, context: Any
    ) -> AsyncIterator[pb.Directive]:
        job, _ = await self._node(request.node_id, request.node_secret, context)
        queue = job.open_stream(request.node_id)
        try:
            while True:
                item = await queue.get()
                if item is None:  # a newer stream of this node took over
                    return
                yield item  # type: ignore[misc]  # an Encoded directive goes as it is
                directive = item.message if isinstance(item, rpc.Encoded) else item
                if directive.WhichOneof("kind") == "shutdown":
                    # let the agent read it before the stream ends
                    await asyncio.sleep(0.5)
                    return
        finally:
            await job.close_stream(request.node_id, queue)

    async def ReportEvent(self, request: pb.EventReport, context: Any) -> pb.EventAck:
        job, node = await self._node(request.node_id, request.node_secret, context)
        limits = self._limits(job)
        await self._checked(context, lambda: checks.check_event(request, node.slots, limits))
        return await self._change(context, job.report(request.node_id, request))

    async def ReportEvents(self, request: pb.EventBatch, context: Any) -> pb.EventAcks:
        job, node = await self._node(request.node_id, request.node_secret, context)
        for report in request.reports:  # a report may leave the batch's fields empty
            report.node_id = report.node_id or request.node_id
            report.node_secret = report.node_secret or request.node_secret
        limits = self._limits(job)
        await self._checked(context, lambda: checks.check_event_batch(request, node.slots, limits))
        return await self._change(context, self._report_each(job, request))

    @staticmethod
    async def _report_each(job: JobController, batch: pb.EventBatch) -> pb.EventAcks:
        """Each report as if sent alone; one the job refuses is a refused ack, and the
        reports after it are still handled."""
        acks = pb.EventAcks()
        for report in batch.reports:
            try:
                acks.acks.append(await job.report(batch.node_id, report))
            except (checks.Refusal, ValueError) as exc:
                acks.acks.append(pb.EventAck(accepted=False, reason=str(exc)[:500]))
        return acks

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        await self._token(request.token, self.credentials.operator_token, "operator", context)
        job = await self._leader(context)
        return job.status()

    async def Admin(self, request: pb.AdminRequest, context: Any) -> pb.AdminResponse:
        await self._token(request.token, self.credentials.operator_token, "operator", context)
        job = await self._leader(context)
        await self._checked(context, lambda: checks.check_admin(request))
        try:
            detail = job.inject_chaos(request)
        except ValueError as exc:
            await rpc.reject(context, "INVALID_ARGUMENT", str(exc))
        return pb.AdminResponse(accepted=True, detail=detail)
