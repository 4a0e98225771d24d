"""The agent's report sender, against a controller that does not answer at first.

Pure wiring of `Agent._sender` with a scripted client in place of the gRPC one: the
retry contract is the agent's alone (the controller's side, that a repeated report
changes nothing, is proven against a live controller in test_controller_membership).
"""

from __future__ import annotations

import asyncio
from typing import Any

from elastiq import rpc
from elastiq.agent.agent import REPORT_ATTEMPTS, Agent, AgentConfig
from elastiq.proto import elastiq_pb2 as pb


class _ScriptedController:
    """Answers ReportEvents with the given errors first, then accepts everything."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls: list[pb.EventBatch] = []

    async def call(self, method: str, request: Any) -> Any:
        assert method == "ReportEvents"
        self.calls.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return pb.EventAcks(acks=[pb.EventAck(accepted=True) for _ in request.reports])


def _sent(errors: list[Exception]) -> list[pb.EventBatch]:
    async def main() -> list[pb.EventBatch]:
        agent = Agent(AgentConfig(controllers=["127.0.0.1:1"], node_id="node-a"))
        controller = _ScriptedController(errors)
        agent.client = controller  # type: ignore[assignment]
        agent.report(pb.WORKER_READY, None, worker_id="node-a.w0")
        sender = asyncio.ensure_future(agent._sender())
        try:
            await asyncio.sleep(0.25 + 0.5 + 0.3)  # past both back-offs
        finally:
            sender.cancel()
        return controller.calls

    return asyncio.run(main())


def test_a_report_the_controller_did_not_answer_is_sent_again() -> None:
    calls = _sent([rpc.RpcRetryable("CANCELLED: CANCELLED")])
    assert len(calls) == 2
    assert calls[0] == calls[1] and calls[1].reports[0].worker_id == "node-a.w0"


def test_a_report_is_tried_a_bounded_number_of_times() -> None:
    errors: list[Exception] = [rpc.RpcRetryable("UNAVAILABLE: busy") for _ in range(10)]
    assert len(_sent(errors)) == REPORT_ATTEMPTS


def test_a_refused_report_is_not_sent_again() -> None:
    assert len(_sent([rpc.RpcRejected("INVALID_ARGUMENT", "bad")])) == 1
