"""`elastiq data tokenize`: text files -> a token file the job trains on.

Text files (any fsspec URL, directory or glob, read in sorted order) are encoded with a
Hugging Face `tokenizers` tokenizer file (JSON: data, never code) and written as a flat
array of uint16 or uint32 ids (`--data-format` of the job). Streaming: a file is read
in blocks of whole lines and each block's ids are written before the next is read, so
the corpus is never held in memory. The output appears only when it is complete (written
beside it, then renamed). A progress bar shows the bytes read; the summary gives tokens
and tokens/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from elastiq import fs
from elastiq.cli.progress import progress_bar

#: bytes of text encoded at a time (whole lines): a few MB bound the memory used
BLOCK_BYTES = 4 << 20
#: id width -> the largest id it holds
DTYPES = {"uint16": (1 << 16) - 1, "uint32": (1 << 32) - 1}


@dataclass(frozen=True, slots=True)
class TokenizeReport:
    files: int
    bytes_read: int
    tokens: int
    seconds: float


def tokenize_files(
    text_url: str,
    tokenizer_file: str,
    out_url: str,
    *,
    dtype: str = "uint16",
    eos: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> TokenizeReport:
    """ValueError, writing nothing, if the inputs are wrong (no files, a vocabulary too
    large for `dtype`, a tokenizer file that does not load)."""
    import numpy as np
    from tokenizers import Tokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
    files = fs.expand(text_url)
    if not files:
        raise ValueError(f"no text files at {text_url!r}")
    try:
        tokenizer = Tokenizer.from_str(fs.read_bytes(tokenizer_file).decode("utf-8"))
    except Exception as exc:  # the library's own parse errors
        raise ValueError(f"{tokenizer_file}: not a tokenizers JSON file ({exc})") from exc
    vocab = tokenizer.get_vocab_size()
    limit = DTYPES[dtype] + 1
    if vocab > limit:
        raise ValueError(
            f"the tokenizer has {vocab} ids, more than {dtype} holds ({limit}); use uint32"
        )
    eos_id = _eos_id(tokenizer) if eos else None
    total = sum(fs.size(f) for f in files)
    started = time.monotonic()
    counts = {"bytes": 0, "tokens": 0}

    def blocks() -> Iterator[bytes]:
        for path in files:
            with fs.open_read(path) as fh:
                for text, last in _line_blocks(fh):
                    counts["bytes"] += len(text)
                    ids = tokenizer.encode(text.decode("utf-8", errors="replace")).ids
                    if eos_id is not None and last:
                        ids.append(eos_id)  # the end of a file: mark the document's end
                    counts["tokens"] += len(ids)
                    if progress is not None:
                        progress(counts["bytes"], total)
                    yield np.asarray(ids, dtype=np.dtype(dtype)).tobytes()

    partial = out_url + ".partial"
    fs.write_chunks(partial, blocks())
    fs.rename(partial, out_url)
    return TokenizeReport(len(files), counts["bytes"], counts["tokens"], time.monotonic() - started)


def _line_blocks(fh: Any) -> Iterator[tuple[bytes, bool]]:
    """(block, is the file's last) of about BLOCK_BYTES each, cut at line ends."""
    pending = b""
    rest = b""
    while True:
        chunk = fh.read(BLOCK_BYTES)
        if not chunk:
            tail = pending + rest
            if tail:
                yield tail, True
            return
        if pending:
            yield pending, False
            pending = b""
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        pending, rest = (data[:cut], data[cut:]) if cut else (b"", data)


def _eos_id(tokenizer: Any) -> int | None:
    for name in ("<|endoftext|>", "</s>", "<eos>", "[SEP]"):
        found = tokenizer.token_to_id(name)
        if found is not None:
            return int(found)
    return None


def cmd_tokenize(args: argparse.Namespace) -> int:
    report = tokenize_files(
        args.text,
        args.tokenizer,
        args.out,
        dtype=args.dtype,
        eos=not args.no_eos,
        progress=progress_bar("tokenize"),
    )
    rate = report.tokens / max(report.seconds, 1e-9)
    print(
        f"wrote {args.out}: {report.tokens:,} {args.dtype} tokens from {report.files} file(s), "
        f"{report.bytes_read:,} bytes of text in {report.seconds:.1f}s ({rate:,.0f} tokens/s); "
        f"train on it with --data {args.out} --data-format {args.dtype}"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = sub.add_parser("data", help="prepare training data")
    actions = data.add_subparsers(dest="action", required=True)
    p = actions.add_parser("tokenize", help="text files -> a token file (uint16/uint32 ids)")
    p.add_argument("text", help="text files: an fsspec URL, directory or glob")
    p.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizers JSON file")
    p.add_argument("--out", required=True, help="the token file to write (any fsspec URL)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="uint16")
    p.add_argument("--no-eos", action="store_true", help="no end-of-text id after each file")
    p.set_defaults(func=cmd_tokenize)
