"""Checksums of checkpoint blocks: CRC-32C for new checkpoints, CRC-32 ones still
verify, and a restore that reads straight into the caller's tensors still refuses
every flipped byte, wherever the block sits in a request (issue 16)."""

from __future__ import annotations

import json
import os
import zlib

import pytest
import torch

from elastiq import fs
from elastiq.checkpoint import checksums
from elastiq.checkpoint.engine import CheckpointConfig, CheckpointEngine, Piece
from elastiq.checkpoint.manifest import MANIFEST, Manifest, ManifestError, step_dir
from elastiq.checkpoint.restore import CheckpointReader, CorruptCheckpoint, Request

BLOCK = 4096
N = 10_000  # 40,000 bytes of float32: 9 full blocks and a short one


def _saved(url: str, step: int = 1) -> torch.Tensor:
    data = torch.randn(N, generator=torch.Generator().manual_seed(step))
    engine = CheckpointEngine(CheckpointConfig(url=url, block_bytes=BLOCK))
    piece = Piece(name="w", shape=(N,), lo=0, hi=N, data=data)
    engine.save(step, [piece], rank=0, parts=1, extra={})
    engine.flush(30)
    engine.close()
    return data


@pytest.fixture(params=["page_cache", "disk"])
def source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a restore reads: a file the page cache holds (several threads, each
    checksumming a block as it reads it), and one that is not (one stream, a checker
    thread behind). "disk": the page cache is said to hold nothing, as after a drop."""
    if request.param == "disk":
        monkeypatch.setattr(fs, "read_cached_into", lambda f, offset, out: 0)
    return str(request.param)


def _read(url: str, lo: int, hi: int, step: int = 1) -> torch.Tensor:
    out = torch.empty(hi - lo)
    CheckpointReader(url, step).read([Request("w", lo, hi, out)])
    return out


def test_crc32c_is_the_castagnoli_polynomial() -> None:
    fn = checksums.checksum_function(checksums.CRC32C)
    assert fn(b"123456789", 0) == 0xE3069283  # the standard check value
    assert fn(b"6789", fn(b"12345", 0)) == 0xE3069283  # continued piece by piece
    with pytest.raises(ValueError, match="knows crc32, crc32c"):
        checksums.checksum_function("md5")


def test_new_checkpoints_name_crc32c_in_their_manifest(tmp_path: object) -> None:
    url = f"{tmp_path}/ckpt"
    data = _saved(url)
    raw = json.loads(fs.read_bytes(f"{url}/{step_dir(1)}/{MANIFEST}"))
    assert raw["version"] == 2 and raw["checksum"] == "crc32c"
    (frag,) = raw["fragments"]
    block0 = data.view(torch.uint8)[:BLOCK].numpy().tobytes()
    assert int(frag["checksums"][0], 16) == checksums.checksum_function("crc32c")(block0, 0)
    assert int(frag["checksums"][0], 16) != zlib.crc32(block0)


@pytest.mark.parametrize(("lo", "hi"), [(0, N), (1500, 9000), (1, 2), (9990, N)])
def test_any_range_restores_bitwise(tmp_path: object, lo: int, hi: int, source: str) -> None:
    """Whole blocks go straight into the tensor; partial ones through scratch."""
    url = f"{tmp_path}/ckpt"
    data = _saved(url)
    assert torch.equal(_read(url, lo, hi), data[lo:hi])


def _flip(url: str, byte: int, step: int = 1) -> None:
    manifest = Manifest.from_json(fs.read_bytes(f"{url}/{step_dir(step)}/{MANIFEST}"))
    (frag,) = manifest.fragments
    path = os.path.join(url, step_dir(step), frag.file)
    with open(path, "r+b") as f:
        f.seek(frag.offset + byte)
        old = f.read(1)
        f.seek(frag.offset + byte)
        f.write(bytes([old[0] ^ 0x01]))


@pytest.mark.parametrize(
    ("flipped", "lo", "hi"),
    [
        (5 * BLOCK + 7, 0, N),  # a whole block read straight into the tensor
        (5 * BLOCK + 7, 5 * 1024 + 3, 5 * 1024 + 9),  # a partial block, through scratch
        (N * 4 - 1, 0, N),  # the short last block
    ],
)
def test_a_flipped_bit_is_refused_wherever_its_block_is(
    tmp_path: object, flipped: int, lo: int, hi: int, source: str
) -> None:
    url = f"{tmp_path}/ckpt"
    _saved(url)
    _flip(url, flipped)
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch in tensor 'w'"):
        _read(url, lo, hi)


def _as_version_1(url: str, step: int = 1) -> None:
    """Rewrite a checkpoint's manifest as elastiq wrote them before issue 16: version 1,
    CRC-32 under "crc32", no algorithm named."""
    where = f"{url}/{step_dir(step)}"
    raw = json.loads(fs.read_bytes(f"{where}/{MANIFEST}"))
    raw["version"] = 1
    del raw["checksum"]
    for frag in raw["fragments"]:
        with open(os.path.join(where, frag["file"]), "rb") as f:
            f.seek(frag["offset"])
            body = f.read((frag["hi"] - frag["lo"]) * 4)
        blocks = range(0, len(body), BLOCK)
        frag["crc32"] = [f"{zlib.crc32(body[a : a + BLOCK]):08x}" for a in blocks]
        del frag["checksums"]
    with open(os.path.join(where, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(raw, f)


def test_a_version_1_crc32_checkpoint_still_restores_and_verifies(tmp_path: object) -> None:
    url = f"{tmp_path}/ckpt"
    data = _saved(url)
    _as_version_1(url)
    reader = CheckpointReader(url, 1)
    assert reader.manifest.checksum == "crc32"
    assert torch.equal(_read(url, 0, N), data)
    _flip(url, 3 * BLOCK)
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        _read(url, 0, N)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checksum": "md5"}, "unknown checksum algorithm 'md5'"),
        ({"version": 3}, "reads versions 1, 2"),
    ],
)
def test_an_unknown_algorithm_or_version_loads_nothing(
    tmp_path: object, change: dict[str, object], message: str
) -> None:
    url = f"{tmp_path}/ckpt"
    _saved(url)
    path = f"{url}/{step_dir(1)}/{MANIFEST}"
    raw = {**json.loads(fs.read_bytes(path)), **change}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(raw, f)
    with pytest.raises(ManifestError, match=message):
        CheckpointReader(url, 1)


@pytest.mark.parametrize("where", ["file", "memory"])
def test_one_stretch_of_a_file_is_scattered_into_many_buffers(tmp_path: object, where: str) -> None:
    """fs.read_into_many: preadv for a local file, a read per buffer elsewhere; a short
    file is an EOFError either way."""
    body = bytes(range(256)) * 40
    url = f"{tmp_path}/f.bin" if where == "file" else f"memory://scatter-{os.getpid()}/f.bin"
    fs.write_bytes(url, body)
    outs = [memoryview(bytearray(n)) for n in (10, 0, 3000, 7)]
    with fs.open_read(url) as f:
        fs.read_into_many(f, 5, outs)
        assert b"".join(bytes(o) for o in outs) == body[5 : 5 + 3017]
        past_the_end = [memoryview(bytearray(15)), memoryview(bytearray(15))]
        with pytest.raises(EOFError, match="short"):
            fs.read_into_many(f, len(body) - 20, past_the_end)


def test_the_page_cache_is_probed_without_reading_the_disk(tmp_path: object) -> None:
    """fs.read_cached_into reads what the page cache holds and nothing else: all of a
    file just written (Linux keeps it cached), nothing of a file without a
    descriptor, and it stops at the end of the file."""
    body = bytes(range(256)) * 64
    path = f"{tmp_path}/f.bin"
    fs.write_bytes(path, body)
    out = memoryview(bytearray(len(body) + 100))
    with fs.open_read(path) as f:
        assert fs.read_cached_into(f, 0, out) == len(body)
        assert bytes(out[: len(body)]) == body
    url = f"memory://probe-{os.getpid()}/f.bin"
    fs.write_bytes(url, body)
    with fs.open_read(url) as f:
        assert fs.read_cached_into(f, 0, out) == 0


def test_a_just_written_checkpoint_is_read_from_the_page_cache(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mode is chosen by the probe: a checkpoint saved a moment ago is in the
    page cache and read by the cached path; the disk path is not taken."""
    url = f"{tmp_path}/ckpt"
    data = _saved(url)
    taken: list[str] = []

    def spy(mode: str) -> object:
        real = getattr(CheckpointReader, mode)

        def called(self: CheckpointReader, *args: object) -> None:
            taken.append(mode)
            real(self, *args)

        return called

    for mode in ("_read_cached", "_read_from_disk"):
        monkeypatch.setattr(CheckpointReader, mode, spy(mode))
    assert torch.equal(_read(url, 0, N), data)
    assert taken == ["_read_cached"]
