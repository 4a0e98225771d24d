"""The agent <-> worker channel: JSON lines over a pair of inherited pipes.

Agent to worker: `config` (once), `plan`, `chaos` (kill-before-snapshot, which only
the worker can time; other faults are signals from the agent), `shutdown`. Worker
to agent: `ready`, `alive` (liveness, from a thread, so a worker blocked in a
collective still counts as alive while a SIGSTOPped one does not), `step`,
`event`, `chaos-fired`, `finished`. One writer lock per end;
a closed pipe reads as EOF (None).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, BinaryIO


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader: BinaryIO = os.fdopen(read_fd, "rb", buffering=0)
        self._writer: BinaryIO = os.fdopen(write_fd, "wb", buffering=0)
        self._buffer = b""
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False if the other end has gone."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                self._writer.write(data)
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False

    def recv(self) -> dict[str, Any] | None:
        """Next message, blocking; None at end of stream."""
        while b"\n" not in self._buffer:
            try:
                chunk = self._reader.read(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    def close(self) -> None:
        for f in (self._reader, self._writer):
            try:
                f.close()
            except OSError:
                pass
