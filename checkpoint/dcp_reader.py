"""Read a PyTorch distributed checkpoint (DCP) directory without executing anything in it.

Where it sits: `elastiq ckpt convert` imports DCP checkpoints through here (see
checkpoint/convert.py). torch's own path (`dcp_to_torch_save`, `FileSystemReader`)
unpickles `.metadata` with plain `pickle` and loads non-tensor items with
`weights_only=False`: a crafted checkpoint runs code on the machine that imports it.
This reader keeps torch's planning and tensor decoding but:

- unpickles `.metadata` with an allow-list of the classes a DCP metadata file holds
  (torch's metadata dataclasses, dtypes, `torch.Size`, paths); anything else is
  refused before it is built;
- loads non-tensor items with `weights_only=True` (plain containers and numbers);
- checks every data file the metadata names is a plain name inside the directory, a
  regular file (not a symlink), and that every item's byte range lies inside it.

A directory that fails any check is a `ValueError` naming what is wrong; nothing is
read past the check.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from elastiq.checkpoint.manifest import ManifestError, check_file_name

METADATA = ".metadata"
#: far above what a real DCP metadata file reaches (a 70B model's is a few MB)
MAX_METADATA_BYTES = 256 << 20

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the allow-listed classes (and torch dtypes); refuses anything else,
    so no callable from the file is ever invoked."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise ValueError(
            f"{METADATA} refers to {module}.{name}, which a DCP metadata file never holds: "
            "refusing to load it (the file may be crafted to run code)"
        )


class _SafeReader(FileSystemReader):
    def __init__(self, path: str, metadata: Metadata) -> None:
        super().__init__(path)
        self._checked = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self._checked


class _SafePlanner(_EmptyStateDictLoadPlanner):
    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as exc:
            why = next((ln for ln in str(exc).splitlines() if "GLOBAL" in ln), type(exc).__name__)
            raise ValueError(
                f"item {read_item.dest_index.fqn!r} is not plain data ({why.strip()}); refusing it"
            ) from exc
        super().load_bytes(read_item, io.BytesIO(_resave(obj)))


def _resave(obj: object) -> bytes:
    # the parent planner calls torch.load(weights_only=False) on what it is given:
    # hand it bytes we produced from an object weights_only already vetted
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def read_metadata(directory: str) -> Metadata:
    """The checked metadata of a DCP directory; ValueError if it is unsafe or malformed."""
    path = os.path.join(directory, METADATA)
    if os.path.islink(path) or not os.path.isfile(path):
        raise ValueError(f"{path} must be a regular file (not a link or a directory)")
    if os.path.getsize(path) > MAX_METADATA_BYTES:
        raise ValueError(f"{path} is larger than {MAX_METADATA_BYTES} bytes: not a DCP metadata")
    with open(path, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{path} is not a readable DCP metadata file ({exc!r})") from exc
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise ValueError(f"{path} does not hold a DCP Metadata object")
    _check_storage(directory, metadata)
    return metadata


def _check_storage(directory: str, metadata: Metadata) -> None:
    sizes: dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        name = str(getattr(info, "relative_path", ""))
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        where = f"{METADATA} entry {getattr(index, 'fqn', '?')!r}"
        try:
            check_file_name(name, where)
        except ManifestError as exc:
            raise ValueError(str(exc)) from exc
        if name not in sizes:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                raise ValueError(f"{where}: {path} must be a regular file (not a link)")
            sizes[name] = os.path.getsize(path)
        if (
            not isinstance(offset, int)
            or not isinstance(length, int)
            or offset < 0
            or length < 0
            or offset + length > sizes[name]
        ):
            raise ValueError(
                f"{where}: bytes [{offset}, {offset}+{length}) are not inside {name} "
                f"({sizes[name]} bytes)"
            )


def load_dcp(directory: str) -> dict[str, Any]:
    """The whole state dict of a local DCP directory, read as described above."""
    metadata = read_metadata(directory)
    state: dict[str, Any] = {}
    try:
        # torch's own DCP -> torch.save converter fills an empty dict this way (the public
        # dcp.load copies back only the keys the caller's dict already had)
        _load_state_dict(
            state,
            storage_reader=_SafeReader(directory, metadata),
            planner=_SafePlanner(),
            no_dist=True,
        )
    except CheckpointException as exc:  # torch wraps each rank's error
        causes = [pair[0] for pair in exc.failures.values()]
        if causes and isinstance(causes[0], ValueError):
            raise ValueError(f"{directory}: {causes[0]}") from exc
        why = repr(causes[0])[:300] if causes else "no detail"
        raise ValueError(f"{directory}: torch could not read it ({why})") from exc
    return state
