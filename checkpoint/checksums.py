"""Block checksums of checkpoint bytes: which algorithm, and computing it fast.

Where it sits: under the engine (which checksums what it writes) and the restorer
(which verifies what it reads); the one module that imports a CRC-32C library.

New checkpoints use CRC-32C through the `crc32c` package (the SSE4.2 / ARMv8 CRC
instructions; it takes any buffer, where google-crc32c refuses a writable one, and a
tensor's bytes are writable). zlib's CRC-32, which checkpoints used before, ran at about 2 GB/s on
one core here and was most of a warm-cache restore (issue 16); the manifest names
the algorithm (`Manifest.checksum`), so a checkpoint written with CRC-32 still
verifies. Both release the GIL on large buffers and continue from a running value,
so a reader checksums each piece it reads while the piece is still in its core's
cache, and several readers run at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import crc32c

CRC32 = "crc32"
CRC32C = "crc32c"
#: what new checkpoints are written with
DEFAULT = CRC32C


#: checksum(data, running): the checksum of everything before `data` followed by
#: `data`, given `running`, the checksum of everything before (0 for nothing)
Checksum = Callable[[memoryview | bytes, int], int]


def _crc32c(data: memoryview | bytes, running: int) -> int:
    return int(crc32c.crc32c(data, running))


def _crc32(data: memoryview | bytes, running: int) -> int:
    return zlib.crc32(data, running)


_FUNCTIONS: dict[str, Checksum] = {CRC32: _crc32, CRC32C: _crc32c}
ALGORITHMS = tuple(_FUNCTIONS)


def checksum_function(algorithm: str) -> Checksum:
    """The function computing `algorithm` over a bytes-like object, continuing from a
    running value; ValueError names the algorithms this elastiq knows (a manifest is
    untrusted input)."""
    try:
        return _FUNCTIONS[algorithm]
    except KeyError:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; this elastiq knows {', '.join(ALGORITHMS)}"
        ) from None


def block_checksums(algorithm: str, data: memoryview, block_bytes: int) -> list[int]:
    """One checksum per `block_bytes` of `data` (the last block may be short; empty
    data has one checksum, of nothing)."""
    fn = checksum_function(algorithm)
    return [fn(data[at : at + block_bytes], 0) for at in range(0, max(len(data), 1), block_bytes)]
