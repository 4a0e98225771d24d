"""Regenerates the committed gRPC stubs from proto/elastiq.proto.

The `-I elastiq/proto=proto` mapping makes protoc see the file under its import
path, so the generated service module imports `elastiq.proto.elastiq_pb2` and no
post-processing is needed. `python proto/generate.py [OUT_DIR]` writes to OUT_DIR
(default: proto/), which the stub-freshness test uses to compare.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parent
GENERATED = ("elastiq_pb2.py", "elastiq_pb2.pyi", "elastiq_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> None:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "protoc",
                f"-I{include}",
                f"-Ielastiq/proto={PROTO_DIR}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                "elastiq/proto/elastiq.proto",
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(pathlib.Path(tmp, "elastiq", "proto", name), out_dir / name)


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR)
