"""The one module that imports fsspec: list, read and write files at any fsspec URL.

Training data and checkpoint tiers go through here, so local paths, file://,
memory://, s3:// and gcs:// behave the same to the callers. Durability: on the
local filesystem a written file is fsync'ed before the call returns; on object
stores a file exists only once its upload completed, at close.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

import fsspec

_COPY_CHUNK = 16 << 20


def filesystem(url: str) -> tuple[Any, str]:
    """(filesystem, path inside it) for a URL or local path."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def expand(url: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files named by `url`: a file, a directory (walked) or a glob; sorted, full URLs."""
    fs, path = filesystem(url)
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.exists(path):
        found = [path]
    else:
        raise FileNotFoundError(f"no file, directory or glob match at {url!r}")
    files = sorted(p for p in found if not suffixes or p.endswith(suffixes))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in files]


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    fs, path = filesystem(url)
    if start is None and end is None:
        return bytes(fs.cat_file(path))
    return bytes(fs.cat_file(path, start=start, end=end))


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file durably under a temporary name, then move it into place, so
    a reader never sees a partial file (on object stores, an object appears whole
    when its upload completes anyway)."""
    fs, path = filesystem(url)
    write_chunks(f"{url}.tmp", [data])
    fs.mv(f"{path}.tmp", path)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def write_chunks(url: str, chunks: Iterable[bytes | memoryview]) -> int:
    """Write a whole file from `chunks` (no copies on the local filesystem) and make
    it durable; returns the bytes written. The file is written in place: callers
    publish it by a later marker, never by its existence."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    written = 0
    if _is_local(fs):
        with open(path, "wb") as f:
            for chunk in chunks:
                written += f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        return written
    with fs.open(path, "wb") as f:
        for chunk in chunks:
            f.write(bytes(chunk) if isinstance(chunk, memoryview) else chunk)
            written += len(chunk)
    return written


def publish_chunks(url: str, chunks: Iterable[bytes | memoryview]) -> int:
    """Like write_chunks, for a file whose existence is its publication (an export):
    written under a temporary name and moved into place only once every chunk was
    produced, so a failure midway (a corrupt source) leaves nothing at `url`."""
    tmp = f"{url}.partial-{os.getpid()}"
    try:
        written = write_chunks(tmp, chunks)
    except BaseException:
        fs, path = filesystem(tmp)
        if fs.exists(path):
            fs.rm(path)
        raise
    rename(tmp, url)
    return written


def copy_file(src_url: str, dst_url: str) -> int:
    """Stream one file to another tier (local disk -> remote); returns bytes."""
    with open_read(src_url) as f:
        return write_chunks(dst_url, iter(lambda: f.read(_COPY_CHUNK), b""))


def open_read(url: str, *, follow_links: bool = True) -> Any:
    """A binary file object. `follow_links=False` (checkpoint files): a local path whose
    last component is a symbolic link is an OSError, checked atomically by the open
    itself (O_NOFOLLOW), so a link planted in a checkpoint never reads a file outside
    it. Object stores have no links."""
    fs, path = filesystem(url)
    if _is_local(fs):
        if follow_links:
            return open(path, "rb")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if os.path.islink(path):
                raise OSError(f"{path} is a symbolic link; refusing to follow it") from exc
            raise
        return os.fdopen(fd, "rb")
    return fs.open(path, "rb")


def read_regular(url: str, limit: int) -> bytes:
    """A whole file that must not be a symbolic link (see open_read) nor be larger
    than `limit` bytes (ValueError): metadata read before anything is verified."""
    with open_read(url, follow_links=False) as f:
        data = bytes(f.read(limit + 1))
    if len(data) > limit:
        raise ValueError(f"{url} is larger than {limit} bytes")
    return data


#: buffers per preadv call (Linux's IOV_MAX)
_IOV_MAX = 1024


def read_into(f: Any, offset: int, out: memoryview) -> None:
    """Fill `out` from byte `offset` of an open file; a short file is an EOFError."""
    f.seek(offset)
    got = 0
    while got < len(out):
        n = f.readinto(out[got:])
        if not n:
            raise EOFError(f"file ends {len(out) - got} bytes short of byte {offset + len(out)}")
        got += n


def _fd(f: Any) -> int:
    """The descriptor of an open local file; -1 for an fsspec file that has none."""
    fileno = getattr(f, "fileno", None)
    try:
        return int(fileno()) if fileno is not None else -1
    except (OSError, ValueError):
        return -1


def reads_positionally(f: Any) -> bool:
    """Whether reads of `f` are positional (pread), so several threads may read the
    same open file at once; an fsspec file without a descriptor seeks, then reads."""
    return _fd(f) >= 0 and hasattr(os, "preadv")


def read_cached_into(f: Any, offset: int, out: memoryview) -> int:
    """Read into `out` from byte `offset` only what the page cache already holds
    (preadv2 with RWF_NOWAIT): the bytes read from the start of `out`, 0 when none is
    cached, the file has no descriptor or the kernel cannot say. Never waits for a
    disk: the caller reads the rest with `read_into_many`."""
    fd = _fd(f)
    if fd < 0 or not hasattr(os, "RWF_NOWAIT"):
        return 0
    got = 0
    while got < len(out):
        try:
            n = os.preadv(fd, [out[got:]], offset + got, os.RWF_NOWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no RWF_NOWAIT here
                break
            raise
        if not n:  # end of file: the blocking read says how short it is
            break
        got += n
    return got


def read_into_many(f: Any, offset: int, outs: list[memoryview]) -> None:
    """Fill `outs`, in order, from the contiguous bytes at `offset` of an open file:
    one positional preadv(2) for a local file (no seek, no copy through Python's
    file buffer), else one read per buffer. A short file is an EOFError."""
    fd = _fd(f)
    if fd < 0 or not hasattr(os, "preadv"):
        at = offset
        for out in outs:
            read_into(f, at, out)
            at += len(out)
        return
    pending = [out for out in outs if len(out)]
    at = offset
    while pending:
        n = os.preadv(fd, pending[:_IOV_MAX], at)
        if not n:
            missing = sum(len(out) for out in pending)
            raise EOFError(f"file ends {missing} bytes short of byte {at + missing}")
        at += n
        while pending and n >= len(pending[0]):
            n -= len(pending[0])
            pending.pop(0)
        if n:
            pending[0] = pending[0][n:]


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def rename(src_url: str, dst_url: str) -> None:
    """Move a file within one filesystem (how a finished file is published)."""
    fs, src = filesystem(src_url)
    _, dst = filesystem(dst_url)
    if _is_local(fs):
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def list_names(url: str) -> list[str]:
    """Names (not paths) of the entries directly inside a directory; [] if absent."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def remove_tree(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def local_path(url: str) -> str | None:
    """The OS path of a local URL, else None."""
    fs, path = filesystem(url)
    return str(path) if _is_local(fs) else None
