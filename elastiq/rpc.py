"""The one module of ours that imports grpc: channels, servers, status mapping.

Callers get typed stubs with a deadline on every unary call, an error taxonomy
(`RpcRetryable` for UNAVAILABLE / DEADLINE_EXCEEDED / connection loss, `RpcRejected`
for answers that will not change on retry), and server-side helpers that end an
RPC with the right status code and a message that says what was wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import grpc.aio

from elastiq.proto import elastiq_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 5.0


class RpcRetryable(Exception):
    """The controller could not be reached or did not answer in time."""


class RpcRejected(Exception):
    """The controller answered with an error that retrying will not fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.details = message


_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


def translate(exc: BaseException) -> Exception:
    if isinstance(exc, grpc.aio.AioRpcError | grpc.RpcError):
        code = exc.code()
        details = exc.details() or ""
        if code in _RETRYABLE:
            return RpcRetryable(f"{code.name}: {details}")
        return RpcRejected(code.name, details)
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class ControllerClient:
    """Async client of the controller service; every unary call has a deadline."""

    def __init__(self, address: str, timeout_s: float = RPC_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[("grpc.enable_retries", 0), ("grpc.max_receive_message_length", 64 << 20)],
        )
        self._stub = pb_grpc.ControllerStub(self._channel)

    async def call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout_s)
        except (grpc.aio.AioRpcError, grpc.RpcError) as exc:
            raise translate(exc) from exc

    async def stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        call = getattr(self._stub, method)(request)
        try:
            async for item in call:
                yield item
        except (grpc.aio.AioRpcError, grpc.RpcError) as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close(grace=None)


class SyncControllerClient:
    """Blocking client for the CLI (status, chaos)."""

    def __init__(self, address: str, timeout_s: float = RPC_TIMEOUT_S) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.ControllerStub(self._channel)
        self.timeout_s = timeout_s

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    def close(self) -> None:
        self._channel.close()


async def reject(context: Any, code: str, message: str) -> NoReturn:
    """End the RPC with status `code` (a grpc.StatusCode name, e.g. "INVALID_ARGUMENT")
    and a message that says what was wrong and what to do."""
    await context.abort(grpc.StatusCode[code], message)
    raise RuntimeError("grpc context.abort() returned instead of raising")  # pragma: no cover


def new_server(servicer: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """An aio server with the controller servicer bound; returns (server, bound port)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    pb_grpc.add_ControllerServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the controller to {host}:{port}")
    return server, bound


ControllerServicerBase = pb_grpc.ControllerServicer
