"""The agent <-> worker channel: length-prefixed protobuf messages over a pipe pair.

Where it sits: the node agent (agent/workers.py) holds one end per worker, the worker
(agent/runtime/agent_link.py) the other. Agent to worker: `pb.ToWorker` (config once,
then plans, chaos and shutdown); worker to agent: `pb.FromWorker` (ready, alive, step,
joined, interrupted, state_lost, chaos_fired, finished). Both messages are defined in
proto/elastiq.proto, so the contract is typed end to end.

Framing: a 4-byte big-endian length, then the serialized message. A frame longer than
`MAX_FRAME` or one that does not parse closes the channel (reads as None): a peer that
sends garbage is treated as gone, never half-understood. One writer lock per end.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import BinaryIO, Generic, TypeVar

from google.protobuf.message import DecodeError, Message

#: Plans for thousands of workers are a few MB; anything far larger is not ours.
MAX_FRAME = 64 << 20
_HEADER = struct.Struct(">I")

In = TypeVar("In", bound=Message)
Out = TypeVar("Out", bound=Message)


class Channel(Generic[In, Out]):
    """Receives `In` messages and sends `Out` messages over two inherited fds."""

    def __init__(self, read_fd: int, write_fd: int, incoming: type[In]) -> None:
        self._reader: BinaryIO = os.fdopen(read_fd, "rb", buffering=0)
        self._writer: BinaryIO = os.fdopen(write_fd, "wb", buffering=0)
        self._incoming = incoming
        self._lock = threading.Lock()

    def send(self, message: Out) -> bool:
        """Send one message; False if the other end has gone."""
        data = message.SerializeToString()
        frame = _HEADER.pack(len(data)) + data
        with self._lock:
            try:
                self._writer.write(frame)
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False

    def recv(self) -> In | None:
        """Next message, blocking; None at end of stream or on a malformed frame."""
        header = self._read_exactly(_HEADER.size)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            self.close()
            return None
        body = self._read_exactly(size)
        if body is None:
            return None
        try:
            return self._incoming.FromString(body)
        except DecodeError:
            self.close()
            return None

    def _read_exactly(self, n: int) -> bytes | None:
        chunks: list[bytes] = []
        while n:
            try:
                chunk = self._reader.read(n)
            except (OSError, ValueError):
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for f in (self._reader, self._writer):
            try:
                f.close()
            except OSError:
                pass
