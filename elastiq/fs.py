"""The one module that imports fsspec: list, read and write files at any fsspec URL.

Training data and (later) checkpoint tiers go through here, so local paths,
file://, memory://, s3:// and gcs:// behave the same to the callers.
"""

from __future__ import annotations

from typing import Any

import fsspec


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
    """Write a whole file: to a temporary name first, then moved into place, so a
    reader never sees a partial file on stores where a move is atomic."""
    fs, path = filesystem(url)
    tmp = f"{path}.tmp"
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)
