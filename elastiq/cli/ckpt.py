"""`elastiq ckpt inspect|verify|convert URL`: checkpoints from the command line.

Kept apart from cli.py, which only registers these subcommands. Long work (verify,
convert) draws a progress bar on stderr and ends with a one-line summary; exit
code 1 when verification finds a problem, 2 on bad input. The checkpoint library
(and torch with it) is imported only when a ckpt command runs: `elastiq agent` and
`elastiq controller` start through the same CLI and need neither.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from elastiq.checkpoint.manifest import ManifestError
from elastiq.cli.flags import parse_model_args
from elastiq.cli.progress import progress_bar


def cmd_inspect(args: argparse.Namespace) -> int:
    from elastiq.checkpoint import convert
    from elastiq.checkpoint.restore import describe

    root, step = convert.locate(args.url)
    info = describe(root, step)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"checkpoint {root} step {info['step']}: committed, {info['parts']} part(s)")
    print(f"  bytes     {info['bytes']:,} in {len(info['files'])} file(s)")
    print(f"  tensors   {info['tensors']} ({info['fragments']} fragments)")
    print(f"  tiers     {info['tiers']}")
    extra = {k: v for k, v in info["extra"].items() if k not in ("model", "schedule")}
    print(f"  extra     {json.dumps(extra, sort_keys=True)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from elastiq.checkpoint import convert

    verdict = convert.verify(args.url, progress_bar("verify"))
    for problem in verdict.problems:
        print(f"  FAIL {problem}")
    state = "OK" if not verdict.problems else f"{len(verdict.problems)} problem(s)"
    print(
        f"verify step {verdict.step}: {state}; {verdict.tensors} tensors, "
        f"{verdict.bytes_read:,} bytes checked"
    )
    return 0 if not verdict.problems else 1


def export_pretrained(checkpoint_url: str, out_dir: str) -> int:
    """Write a committed checkpoint of a model trained from `elastiq.hf:build` as a
    directory `from_pretrained` loads (config.json + model.safetensors under the model's
    own parameter names); returns the bytes of tensors written."""
    from elastiq.checkpoint.convert import export_safetensors, locate
    from elastiq.checkpoint.restore import describe
    from elastiq.hf import config_of

    root, step = locate(checkpoint_url)
    extra = describe(root, step)["extra"]
    if extra.get("model_entry") != "elastiq.hf:build":
        raise ValueError(
            f"{checkpoint_url}: trained from {extra.get('model_entry') or 'the built-in decoder'}, "
            "not elastiq.hf:build, so there is no Hugging Face config to export with"
        )
    config = config_of(extra.get("model_args", {}))
    config.save_pretrained(out_dir)
    return export_safetensors(root, f"{out_dir.rstrip('/')}/model.safetensors")


def cmd_convert(args: argparse.Namespace) -> int:
    from elastiq.checkpoint import convert

    kind = args.source_format or convert.detect(args.src)
    t0 = time.monotonic()
    if args.format == "hf":
        written = export_pretrained(args.src, args.dst)
        what = "a Hugging Face model directory (from_pretrained loads it)"
    elif args.source_format == "torch-run":
        from elastiq.model_api import build_model, model_param_names

        if not args.model:
            raise ValueError("--from torch-run needs --model (the run's parameter names)")
        built = build_model(args.model, parse_model_args(args.model_arg), seed=0)
        written = convert.import_training_run(
            args.src, args.dst, args.step, model_param_names(built), progress_bar("import")
        )
        what = f"universal checkpoint of step {args.step} (parameters and AdamW moments)"
    elif kind == "elastiq":
        written = convert.export_safetensors(args.src, args.dst, progress=progress_bar("export"))
        what = "consolidated safetensors"
    elif kind == "dcp":
        written = convert.import_dcp(args.src, args.dst, args.step, progress_bar("import"))
        what = f"universal checkpoint of step {args.step}"
    else:
        written = convert.import_torch_file(args.src, args.dst, args.step, progress_bar("import"))
        what = f"universal checkpoint of step {args.step}"
    print(f"wrote {what} to {args.dst}: {written:,} bytes in {time.monotonic() - t0:.1f}s")
    return 0


def _guarded(func: object) -> object:
    def run(args: argparse.Namespace) -> int:
        from elastiq.checkpoint.restore import CorruptCheckpoint, NoCheckpoint

        try:
            return func(args)  # type: ignore[operator]
        except (NoCheckpoint, ManifestError, CorruptCheckpoint, OSError) as exc:
            print(f"elastiq ckpt: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ckpt = sub.add_parser("ckpt", help="inspect, verify or convert checkpoints")
    actions = ckpt.add_subparsers(dest="action", required=True)
    p = actions.add_parser("inspect", help="what a checkpoint holds (root: its newest)")
    p.add_argument("url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(cmd_inspect))
    p = actions.add_parser("verify", help="read every byte against its checksum")
    p.add_argument("url")
    p.set_defaults(func=_guarded(cmd_verify))
    p = actions.add_parser(
        "convert",
        help="elastiq -> consolidated .safetensors; DCP dir or .pt state dict -> elastiq",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument(
        "--from",
        dest="source_format",
        choices=("elastiq", "dcp", "state-dict", "torch-run"),
        help="torch-run: torch.save({'model': model.state_dict(), 'optim': "
        "adamw.state_dict()}) of a plain PyTorch loop, resumable with --resume",
    )
    p.add_argument("--model", default="", help="with --from torch-run: the model's builder")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--step", type=int, default=0, help="step recorded for an import")
    p.add_argument(
        "--format",
        choices=("safetensors", "hf"),
        default="safetensors",
        help="export as one safetensors file, or (hf) a directory from_pretrained loads "
        "(models trained from elastiq.hf:build)",
    )
    p.set_defaults(func=_guarded(cmd_convert))
