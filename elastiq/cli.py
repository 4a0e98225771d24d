"""The `elastiq` command line: run, controller, agent, status, chaos, ckpt.

A short entry point: parse, build the validated config objects, hand over to the
part that does the work. Where the controller and token come from, in order: the
flag, the environment (ELASTIQ_CONTROLLER, ELASTIQ_TOKEN), then the run file a
local `elastiq run` writes for its job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from elastiq import ckpt_cli, envvars, logs
from elastiq.config import JobConfig, ModelConfig


def _add_job_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training job")
    g.add_argument("--job", default="elastiq", help="job name")
    g.add_argument("--steps", type=int, default=200, help="optimizer steps")
    g.add_argument(
        "--global-batch", type=int, default=32, help="samples per step (kept through failures)"
    )
    g.add_argument("--micro-batch", type=int, default=4, help="samples per micro-batch")
    g.add_argument("--seq-len", type=int, default=64, help="tokens (bytes) per sample")
    g.add_argument("--dim", type=int, default=64, help="model width")
    g.add_argument("--layers", type=int, default=4, help="transformer blocks")
    g.add_argument("--heads", type=int, default=4, help="attention heads")
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order, dropout")
    g.add_argument(
        "--data", default="", help="fsspec path/dir/glob of text; default: Python's stdlib"
    )
    g.add_argument("--step-delay", type=float, default=0.0, help="extra seconds per step (demos)")
    g.add_argument("--zero", type=int, default=0, choices=(0, 1, 2), help="ZeRO stage")
    g.add_argument("--pipeline-stages", type=int, default=1, help="pipeline stages")
    g.add_argument("--final-params", default="", help="fsspec URL for the final parameters")
    g.add_argument("--checkpoint-url", default="", help="checkpoint root (dir or fsspec URL)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="save every N steps (0: never)")
    g.add_argument("--checkpoint-keep", type=int, default=3, help="committed checkpoints kept")
    g.add_argument(
        "--checkpoint-local-dir", default="", help="node-local tier written before the upload"
    )
    g.add_argument(
        "--checkpoint-max-staleness",
        type=int,
        default=0,
        help="steps a restorable checkpoint may lag (0: any)",
    )
    g.add_argument(
        "--no-buddy-snapshots", action="store_true", help="no per-step copies to buddies"
    )
    g.add_argument(
        "--checkfree",
        action="store_true",
        help="rebuild a stage that exists nowhere from its neighbours (approximate)",
    )
    g.add_argument("--checkfree-lr-scale", type=float, default=1.1)
    g.add_argument(
        "--checkfree-plus",
        action="store_true",
        help="with --checkfree: swap edge stages' blocks on odd micro-batches and keep "
        "copies of the embedding and head, so a lost first or last stage can be rebuilt",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="start from the newest committed checkpoint (any worker count)",
    )


def _job_config(args: argparse.Namespace) -> JobConfig:
    return JobConfig(
        job=args.job,
        steps=args.steps,
        global_batch=args.global_batch,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
        data=args.data,
        step_delay_s=args.step_delay,
        zero=args.zero,
        pipeline_stages=args.pipeline_stages,
        final_params=args.final_params,
        checkpoint_url=args.checkpoint_url,
        checkpoint_every=args.checkpoint_every,
        checkpoint_keep=args.checkpoint_keep,
        checkpoint_local_dir=args.checkpoint_local_dir,
        resume=args.resume,
        checkpoint_max_staleness=args.checkpoint_max_staleness,
        buddy_snapshots=not args.no_buddy_snapshots,
        checkfree=args.checkfree,
        checkfree_lr_scale=args.checkfree_lr_scale,
        checkfree_plus=args.checkfree_plus,
        model=ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads),
    )


def _endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """(controller address, token): flag > environment > the local run file."""
    from elastiq.local import run_file_path

    address = envvars.resolve(args.controller, envvars.CONTROLLER, "", str)
    token = envvars.resolve(args.token, envvars.TOKEN, "", str)
    if not address or not token:
        path = run_file_path(args.job)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                saved = json.load(fh)
            address = address or saved["controller"]
            token = token or saved["token"]
    if not address:
        raise SystemExit(
            f"no controller: pass --controller host:port, set {envvars.CONTROLLER}, "
            f"or start `elastiq run --job {args.job}` on this machine"
        )
    return address, token


def cmd_run(args: argparse.Namespace) -> int:
    from elastiq.local import ChaosSpec, LocalRunConfig, run_local

    local = LocalRunConfig(
        workers=args.workers,
        workers_per_node=args.workers_per_node,
        spare_nodes=args.spare_nodes,
        store=envvars.resolve(args.store, envvars.STORE, "embedded", str),
        chaos=[ChaosSpec.parse(c) for c in args.chaos],
        liveness_timeout_s=args.liveness_timeout,
        summary_json=args.summary_json,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
    )
    summary = run_local(_job_config(args), local)
    return 0 if summary["phase"] == "Succeeded" else 1


def cmd_controller(args: argparse.Namespace) -> int:
    from elastiq.controller.job import ControllerConfig
    from elastiq.controller.server import Controller, ServerConfig

    control = ControllerConfig(
        token=envvars.resolve(args.token, envvars.TOKEN, "", str),
        lease_ttl_s=args.lease_ttl,
        heartbeat_interval_s=args.heartbeat_interval,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        settle_s=args.settle,
        takeover_grace_s=args.takeover_grace,
    )
    server = ServerConfig(
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host or args.host,
        metrics_port=args.metrics_port,
        store=envvars.resolve(args.store, envvars.STORE, "embedded", str),
    )
    job = _job_config(args)

    async def main() -> int:
        controller = Controller(job, control, server)
        await controller.start(wait_for_leadership=False)
        line = f"elastiq controller listening on {server.host}:{controller.port}"
        if controller.metrics_port:
            line += f" metrics on :{controller.metrics_port}"
        print(line, flush=True)
        if args.port_file:
            with open(args.port_file + ".tmp", "w", encoding="utf-8") as fh:
                fh.write(str(controller.port))
            os.replace(args.port_file + ".tmp", args.port_file)
        try:
            while controller.job is None or not controller.job.done.is_set():
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # let agents read the final directive
            return 0 if controller.job.phase == "Succeeded" else 1
        finally:
            await controller.stop()

    return asyncio.run(main())


def cmd_agent(args: argparse.Namespace) -> int:
    from elastiq.agent.agent import Agent, AgentConfig

    controllers = envvars.resolve(args.controller, envvars.CONTROLLER, "", str)
    config = AgentConfig(
        controllers=[c for c in controllers.split(",") if c],
        token=envvars.resolve(args.token, envvars.TOKEN, "", str),
        node_id=envvars.resolve(args.node_id, envvars.NODE_ID, "", str),
        slots=args.slots,
        liveness_timeout_s=args.liveness_timeout,
        progress_timeout_s=args.progress_timeout,
        log_level=args.log_level,
    )
    return asyncio.run(Agent(config).run())


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    from elastiq import rpc

    address, token = _endpoint(args)
    return rpc.SyncControllerClient(address), token


def cmd_status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from elastiq.proto import elastiq_pb2 as pb

    client, token = _client(args)
    try:
        status = client.call("Status", pb.StatusRequest(token=token))
    finally:
        client.close()
    if args.json:
        print(json_format.MessageToJson(status, preserving_proto_field_name=True))
        return 0
    print(
        f"job {status.job}  phase {status.phase}  generation {status.generation}  "
        f"step {status.step}/{status.total_steps}  loss {status.loss:.4f}  "
        f"failures {status.failures}  leader {status.leader}"
    )
    print(
        f"plan g{status.plan.generation}: {status.plan.world_size} ranks, rendezvous "
        f"{status.plan.rendezvous}, state from {status.plan.state_source or '-'}"
        f"{'  (' + status.plan.reason + ')' if status.plan.reason else ''}"
    )
    for i, st in enumerate(status.plan.stages):
        print(
            f"  stage {i}: layer units [{st.unit_lo}, {st.unit_hi}) on ranks {list(st.ranks)}, "
            f"state from {st.source or '-'}"
        )
    if status.plan.lr_scaled_units:
        print(
            f"checkfree: layer units {list(status.plan.lr_scaled_units)} were rebuilt from "
            f"their neighbours (the model is approximated; lr x{status.plan.lr_scale:g})"
        )
    if status.plan.swap_first or status.plan.swap_last:
        print(
            f"checkfree+: odd micro-batches swap the first {status.plan.swap_first} and the "
            f"last {status.plan.swap_last} blocks with their neighbours; stages 1 and "
            f"{max(len(status.plan.stages) - 2, 0)} keep copies of the embedding and the head"
        )
    print(
        f"{'rank':>4}  {'worker':<20} {'node':<12} {'state':<9} {'step':>6} {'loss':>8} {'pid':>7}"
    )
    for m in sorted(status.members, key=lambda m: (m.rank < 0, m.rank, m.worker_id)):
        rank = str(m.rank) if m.rank >= 0 else "-"
        print(
            f"{rank:>4}  {m.worker_id:<20} {m.node_id:<12} {m.state:<9} {m.step:>6} "
            f"{m.loss:>8.4f} {m.pid:>7}"
        )
    print("last events:")
    for ev in list(status.events)[-args.events :]:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.wall_time))
        print(f"  {stamp} g{ev.generation} {ev.kind}: {ev.message}")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from elastiq import rpc
    from elastiq.local import CHAOS_ACTIONS
    from elastiq.proto import elastiq_pb2 as pb

    client, token = _client(args)
    action = CHAOS_ACTIONS[args.action]
    request = pb.AdminRequest(token=token, action=action, at_step=args.at_step)
    if args.action == "kill-node":
        request.node_id = args.node
    else:
        request.rank = args.rank
    try:
        reply = client.call("Admin", request)
    except rpc.RpcRejected as exc:
        print(f"elastiq chaos: refused: {exc.details}", file=sys.stderr)
        return 2
    finally:
        client.close()
    print(reply.detail)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastiq", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default=None, help="elastiq log level (default WARNING for run)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job on this machine (controller + agents)")
    _add_job_args(run)
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--workers-per-node", type=int, default=1)
    run.add_argument(
        "--spare-nodes", type=int, default=0, help="extra nodes whose workers stand by as spares"
    )
    run.add_argument("--store", default=None, help="embedded (default) or etcd://host:port")
    run.add_argument(
        "--chaos",
        action="append",
        default=[],
        help="fault by (rank, step): kill-worker:rank=2,step=50 | hang:rank=1,step=30 | "
        "kill-node:node=node1,step=40 | kill-before-snapshot:rank=1,step=15 (repeatable)",
    )
    run.add_argument("--liveness-timeout", type=float, default=3.0)
    run.add_argument(
        "--summary-json", default="", help="also write the end-of-run summary as JSON here"
    )
    run.add_argument("--metrics-port", type=int, default=-1)
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser("controller", help="run the controller")
    _add_job_args(ctl)
    ctl.add_argument("--host", default="127.0.0.1")
    ctl.add_argument("--advertise-host", default="")
    ctl.add_argument("--port", type=int, default=0)
    ctl.add_argument("--port-file", default="", help="write the bound port here")
    ctl.add_argument("--store", default=None, help="embedded[:///path] or etcd://host:port")
    ctl.add_argument("--token", default=None)
    ctl.add_argument("--min-workers", type=int, default=1)
    ctl.add_argument(
        "--max-workers", type=int, default=0, help="train with at most N; the rest are spares"
    )
    ctl.add_argument("--settle", type=float, default=1.0)
    ctl.add_argument("--lease-ttl", type=float, default=3.0)
    ctl.add_argument("--heartbeat-interval", type=float, default=0.5)
    ctl.add_argument("--takeover-grace", type=float, default=5.0)
    ctl.add_argument("--metrics-port", type=int, default=-1)
    ctl.set_defaults(func=cmd_controller)

    agent = sub.add_parser("agent", help="run a node agent")
    agent.add_argument("--controller", default=None, help="host:port[,host:port...]")
    agent.add_argument("--token", default=None)
    agent.add_argument("--node-id", default=None)
    agent.add_argument("--slots", type=int, default=1)
    agent.add_argument("--liveness-timeout", type=float, default=5.0)
    agent.add_argument("--progress-timeout", type=float, default=300.0)
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser("status", help="members, generation, plan, last events")
    status.add_argument("--controller", default=None)
    status.add_argument("--token", default=None)
    status.add_argument("--job", default="elastiq", help="job whose local run file to use")
    status.add_argument("--events", type=int, default=10)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    chaos = sub.add_parser("chaos", help="inject a fault into a running job")
    chaos.add_argument("--controller", default=None)
    chaos.add_argument("--token", default=None)
    chaos.add_argument("--job", default="elastiq")
    chaos_sub = chaos.add_subparsers(dest="action", required=True)
    for name, what in (
        ("kill-worker", "SIGKILL a worker"),
        ("hang", "SIGSTOP a worker"),
        (
            "kill-before-snapshot",
            "SIGKILL a worker right after its update of --at-step, before its snapshot leaves",
        ),
    ):
        p = chaos_sub.add_parser(name, help=what)
        p.add_argument("--rank", type=int, required=True)
        p.add_argument("--at-step", type=int, default=0)
    p = chaos_sub.add_parser("kill-node", help="SIGKILL an agent and its workers")
    p.add_argument("--node", required=True)
    p.add_argument("--at-step", type=int, default=0)
    chaos.set_defaults(func=cmd_chaos)
    ckpt_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default_level = "WARNING" if args.command in ("run", "status", "chaos", "ckpt") else "INFO"
    level = args.log_level or envvars.resolve(None, envvars.LOG_LEVEL, default_level, str)
    args.log_level = level
    logs.setup(level, role=args.command)
    try:
        code: int = args.func(args)
        return code
    except ValueError as exc:
        print(f"elastiq {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
