"""The one module of ours that imports grpc: channels, servers, status mapping.

Callers get typed stubs with a deadline on every unary call, an error taxonomy
(`RpcRetryable` for UNAVAILABLE / DEADLINE_EXCEEDED / connection loss, `RpcRejected`
for answers that will not change on retry), and server-side helpers that end an
RPC with the right status code and a message that says what was wrong.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio

from elastiq.proto import elastiq_pb2 as pb
from elastiq.proto import elastiq_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 5.0
#: reports one `ReportEvents` batch may carry per slot of its node: a worker reports a
#: handful of events per generation, and an agent sends what queued up meanwhile
MAX_REPORTS_PER_SLOT = 16
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]
#: calls the server holds before its handlers take them. gRPC's default (3,000 at
#: most) cancelled about 1 in 20 reports after a failure at 10,000 simulated workers
#: (bench/scale.py: 2,500 agents report JOINED within a second), as CANCELLED; a
#: call waiting here still has its deadline, so a flood ends there, not in memory
MAX_PENDING_REQUESTS = 32768


@dataclass(kw_only=True, slots=True, frozen=True)
class TlsFiles:
    """PEM files for TLS on the controller's port. A server needs `cert` and `key`;
    with `ca` it also requires every client to present a certificate that CA signed
    (mutual TLS). A client needs `ca` (the CA that signed the server's certificate);
    with `cert` and `key` it presents its own."""

    ca: str = ""
    """CA certificate that signed the peer's certificate."""
    cert: str = ""
    """This side's certificate chain."""
    key: str = ""
    """This side's private key."""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")

    @staticmethod
    def _read(path: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ValueError(f"TLS file {path}: {exc.strerror}") from exc

    def server_credentials(self) -> grpc.ServerCredentials:
        if not self.cert:
            raise ValueError("a TLS server needs --tls-cert and --tls-key")
        key, cert = self._read(self.key), self._read(self.cert)
        ca = self._read(self.ca)
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if not self.ca:
            raise ValueError("a TLS client needs the CA that signed the controller (--tls-ca)")
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )


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

    def __init__(
        self, address: str, timeout_s: float = RPC_TIMEOUT_S, tls: TlsFiles | None = None
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        options = [("grpc.enable_retries", 0), *_OPTIONS]
        self._channel = (
            grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
            if tls is not None and tls.ca
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._stub = pb_grpc.ControllerStub(self._channel)

    async def call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout_s)
        except (grpc.aio.AioRpcError, grpc.RpcError) as exc:
            raise translate(exc) from exc

    async def stream(self, method: str, request: Any) -> AsyncGenerator[Any, None]:
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

    def __init__(
        self, address: str, timeout_s: float = RPC_TIMEOUT_S, tls: TlsFiles | None = None
    ) -> None:
        self._channel = (
            grpc.secure_channel(address, tls.channel_credentials(), options=_OPTIONS)
            if tls is not None and tls.ca
            else grpc.insecure_channel(address, options=_OPTIONS)
        )
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


def is_abort(exc: BaseException) -> bool:
    """Whether `exc` is how grpc ends an RPC that `reject` aborted (let it through)."""
    return isinstance(exc, grpc.aio.AbortError)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A response serialized once for many streams: a plan goes to every agent, and
    at 10,000 workers (bench/scale.py) it is hundreds of KB; encoding it per stream
    repeated the same work 2,500 times. `message` is what the handler reads."""

    message: Any
    wire: bytes

    @classmethod
    def of(cls, message: Any) -> Encoded:
        return cls(message, message.SerializeToString())


def _serialize(response: Any) -> bytes:
    return response.wire if isinstance(response, Encoded) else response.SerializeToString()


def _add_controller_service(servicer: Any, server: grpc.aio.Server) -> None:
    """The generated registration, built from the service descriptor, with one
    difference: responses may be `Encoded` (sent as they are)."""
    service = pb.DESCRIPTOR.services_by_name["Controller"]
    handlers = {}
    for method in service.methods:
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def new_server(
    servicer: Any, host: str, port: int, tls: TlsFiles | None = None
) -> tuple[grpc.aio.Server, int]:
    """An aio server with the controller servicer bound (TLS if `tls` has a
    certificate); returns (server, bound port). Requests are capped at 4 MiB: the
    largest legitimate one (a register of 1,024 workers) is a few hundred KB."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.server.max_pending_requests", MAX_PENDING_REQUESTS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_REQUESTS),
        ]
    )
    _add_controller_service(servicer, server)
    if tls is not None and tls.cert:
        bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the controller to {host}:{port}")
    return server, bound


ControllerServicerBase = pb_grpc.ControllerServicer
