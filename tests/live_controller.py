"""A real controller in this process for control-plane tests: gRPC on port 0, the
embedded store (or any store URL), and a `Session` that speaks to it as an agent and
as an operator would, holding the node secrets Register issues."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from elastiq import rpc
from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig
from elastiq.controller.server import Controller, ServerConfig
from elastiq.controller.service import Credentials
from elastiq.proto import elastiq_pb2 as pb

AGENT_TOKEN = "agent-token-for-tests-0123"
OPERATOR_TOKEN = "operator-token-for-tests-0123"
CREDENTIALS = Credentials(agent_token=AGENT_TOKEN, operator_token=OPERATOR_TOKEN)


class Session:
    """One gRPC client; `secrets` maps each node this session registered to its secret."""

    def __init__(self, address: str, tls: rpc.TlsFiles | None = None) -> None:
        self.client = rpc.ControllerClient(address, tls=tls)
        self.secrets: dict[str, str] = {}

    async def register(
        self, node: str = "node-a", token: str = AGENT_TOKEN, **fields: Any
    ) -> pb.RegisterResponse:
        fields.setdefault("slots", 1)
        reply = await self.client.call(
            "Register", pb.RegisterRequest(token=token, node_id=node, **fields)
        )
        self.secrets[node] = reply.node_secret
        return reply

    async def report(self, node: str = "node-a", **fields: Any) -> pb.EventAck:
        fields.setdefault("node_secret", self.secrets.get(node, ""))
        return await self.client.call("ReportEvent", pb.EventReport(node_id=node, **fields))

    async def ready_worker(self, node: str = "node-a", **fields: Any) -> pb.EventAck:
        fields = {
            "kind": pb.WORKER_READY,
            "worker_id": f"{node}.w0",
            "slot": 0,
            "pid": 1,
            "model": pb.ModelShape(unit_numel=JobConfig().unit_numel()),
            **fields,
        }
        return await self.report(node, **fields)

    async def heartbeat(self, node: str = "node-a", **fields: Any) -> pb.HeartbeatResponse:
        fields.setdefault("node_secret", self.secrets.get(node, ""))
        return await self.client.call("Heartbeat", pb.HeartbeatRequest(node_id=node, **fields))

    async def admin(self, token: str = OPERATOR_TOKEN, **fields: Any) -> pb.AdminResponse:
        return await self.client.call("Admin", pb.AdminRequest(token=token, **fields))

    async def status(self, token: str = OPERATOR_TOKEN) -> pb.StatusResponse:
        return await self.client.call("Status", pb.StatusRequest(token=token))

    async def close(self) -> None:
        await self.client.close()


def with_controller(
    body: Callable[[Controller, Session], Awaitable[Any]],
    job: JobConfig | None = None,
    server: ServerConfig | None = None,
    credentials: Credentials = CREDENTIALS,
    **control: Any,
) -> Any:
    async def main() -> Any:
        controller = Controller(
            job or JobConfig(job="input-test", steps=5),
            ControllerConfig(**{"min_workers": 1, "settle_s": 0.0, "coalesce_s": 0.0, **control}),
            server or ServerConfig(metrics_port=0),
            credentials,
        )
        await controller.start()
        session = Session(f"127.0.0.1:{controller.port}")
        try:
            return await body(controller, session)
        finally:
            await session.close()
            await controller.stop()

    return asyncio.run(asyncio.wait_for(main(), 60))


async def snapshot(controller: Controller) -> list[tuple[str, bytes]]:
    """Every key and value of the job in the store."""
    assert controller.store is not None
    return [(kv.key, kv.value) for kv in await controller.store.get_prefix("/elastiq/")]


async def planned_one_worker(controller: Controller, session: Session) -> None:
    """Register node-a with one ready worker, wait for generation 1, and report that
    the worker joined it (as a real worker does once its communicator is built)."""
    await session.register()
    await session.ready_worker()
    for _ in range(100):
        if controller.job is not None and controller.job.generation == 1:
            ack = await session.report(
                kind=pb.JOINED, worker_id="node-a.w0", slot=0, pid=1, generation=1
            )
            if not ack.accepted:
                raise RuntimeError(f"JOINED refused: {ack.reason}")
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("generation 1 was not planned")
