"""The `elastiq` command line: run, controller, agent, status, chaos, ckpt.

A short entry point: parse, build the validated config objects, hand over to the
part that does the work. Where the controller and the operator token come from, in
order: the flag (--token-file: a file, never the token itself in argv), the
environment (ELASTIQ_CONTROLLER, ELASTIQ_OPERATOR_TOKEN), then the 0600 run file a
local `elastiq run` writes for its job. Tokens: elastiq/secret_files.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from elastiq import envvars, logs, rpc
from elastiq.agent.agent import AgentConfig
from elastiq.agent.worker_host import WorkerHostConfig
from elastiq.child_processes import die_with_parent
from elastiq.cli import ckpt, data
from elastiq.cli.flags import add_flags, config_from, parse_model_args
from elastiq.cli.local_run_config import LocalRunConfig
from elastiq.cli.summary import phase_name
from elastiq.config import JobConfig
from elastiq.controller.job_state import ControllerConfig
from elastiq.controller.server import ServerConfig
from elastiq.controller.service import Credentials
from elastiq.kube.job_runner import OperatorConfig
from elastiq.proto import elastiq_pb2 as pb
from elastiq.secret_files import read_token

#: the built-in decoder's shape keeps the short flags users know; --model names a builder
MODEL_FLAGS = {
    "model.dim": "--dim",
    "model.n_layers": "--layers",
    "model.n_heads": "--heads",
    "model_entry": "--model",
}
_JOB_SKIP = ("model_args",)


def _add_job_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training job (JobConfig)")
    add_flags(group, JobConfig, rename=MODEL_FLAGS, skip=_JOB_SKIP)
    group.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument for the --model builder (repeatable; VALUE is read as JSON when "
        "it parses, else as a string)",
    )


def _job_config(args: argparse.Namespace) -> JobConfig:
    flags = config_from(
        JobConfig, args, skip=_JOB_SKIP, model_args=parse_model_args(args.model_arg)
    )
    path = getattr(args, "job_config", "")
    if not path:
        return flags
    if flags != JobConfig():
        raise ValueError("give the job either as --job-config FILE or as flags, not both")
    try:
        with open(path, encoding="utf-8") as fh:
            return JobConfig.from_json(fh.read())
    except OSError as exc:
        raise ValueError(f"--job-config {path}: {exc.strerror}") from exc


def _endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """(controller address, token): flag > environment > the local run file."""
    from elastiq.cli.local_run_config import run_file_path

    address = envvars.resolve(args.controller, envvars.CONTROLLER, "", str)
    token = read_token(args.token_file, envvars.OPERATOR_TOKEN, "operator")
    if not address or not token:
        path = run_file_path(args.job)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                saved = json.load(fh)
            address = address or saved["controller"]
            token = token or saved["operator_token"]
    if not address:
        raise SystemExit(
            f"no controller: pass --controller host:port, set {envvars.CONTROLLER}, "
            f"or start `elastiq run --job {args.job}` on this machine"
        )
    return address, token


#: LocalRunConfig fields `elastiq run` sets another way
_RUN_SKIP = ("chaos", "add_nodes_at", "log_level")
_RUN_ENV = {"store": envvars.STORE}
#: secrets never come from argv: --*-token-file names a file (flag > environment)
_CONTROLLER_SKIP: tuple[str, ...] = ()
_SERVER_ENV = {"store": envvars.STORE}
_AGENT_SKIP = ("controllers", "token", "log_level")
_AGENT_ENV = {"node_id": envvars.NODE_ID}


def cmd_run(args: argparse.Namespace) -> int:
    from elastiq.cli.chaos_spec import ChaosSpec
    from elastiq.cli.local_run import run_local

    local = config_from(
        LocalRunConfig,
        args,
        skip=_RUN_SKIP,
        env=_RUN_ENV,
        chaos=[ChaosSpec.parse(c) for c in args.chaos],
        add_nodes_at=args.add_node_at,
        log_level=args.log_level,
    )
    summary = run_local(_job_config(args), local)
    return 0 if summary.succeeded else 1


def cmd_controller(args: argparse.Namespace) -> int:
    from elastiq.controller.server import Controller

    credentials = Credentials(
        agent_token=read_token(args.agent_token_file, envvars.AGENT_TOKEN, "agent"),
        operator_token=read_token(args.operator_token_file, envvars.OPERATOR_TOKEN, "operator"),
        insecure=args.insecure,
    )
    control = config_from(ControllerConfig, args, skip=_CONTROLLER_SKIP)
    server = config_from(ServerConfig, args, env=_SERVER_ENV)
    job = _job_config(args)

    async def main() -> int:
        controller = Controller(job, control, server, credentials)
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
            # let agents read the final directive; on Kubernetes the operator reads the
            # final status meanwhile, then removes this controller
            await asyncio.sleep(args.linger_s)
            return 0 if controller.job.phase == pb.JOB_SUCCEEDED else 1
        finally:
            await controller.stop()

    return asyncio.run(main())


def cmd_agent(args: argparse.Namespace) -> int:
    from elastiq.agent.agent import Agent

    controllers = envvars.resolve(args.controller, envvars.CONTROLLER, "", str)
    config = config_from(
        AgentConfig,
        args,
        skip=_AGENT_SKIP,
        env=_AGENT_ENV,
        controllers=[c for c in controllers.split(",") if c],
        token=read_token(args.token_file, envvars.AGENT_TOKEN, "agent"),
        log_level=args.log_level,
    )
    if config.exit_with_parent and not die_with_parent():
        print("elastiq agent: the process that started it has exited", file=sys.stderr)
        return 1
    return asyncio.run(Agent(config).run())


def cmd_operator(args: argparse.Namespace) -> int:
    from elastiq.kube.operator import run

    run(config_from(OperatorConfig, args, skip=("namespaces",), namespaces=args.namespace))
    return 0


def cmd_worker_host(args: argparse.Namespace) -> int:
    from elastiq.agent.worker_host import WorkerHost

    config = config_from(WorkerHostConfig, args, env={"socket_path": envvars.AGENT_SOCKET})
    return WorkerHost(config).run()


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    from elastiq import rpc

    address, token = _endpoint(args)
    tls = rpc.TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    return rpc.SyncControllerClient(address, tls=tls), token


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
        f"job {status.job}  phase {phase_name(status.phase)}  generation {status.generation}  "
        f"step {status.step}/{status.total_steps}  loss {status.loss:.4f}  "
        f"failures {status.failures}  leader {status.leader}"
    )
    if status.waiting_for:
        print(f"waiting: {status.waiting_for}")
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


def cmd_chaos_run(args: argparse.Namespace) -> int:
    from elastiq.chaos.runner import run_scenario
    from elastiq.chaos.scenario import Scenario

    try:
        with open(args.scenario, encoding="utf-8") as fh:
            scenario = Scenario.from_yaml(fh.read(), args.scenario)
    except OSError as exc:
        raise ValueError(f"scenario {args.scenario}: {exc.strerror}") from exc
    work_dir = args.work_dir or os.path.join("runs", time.strftime("chaos-%Y%m%d-%H%M%S"))
    summary = run_scenario(scenario, work_dir)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            fh.write(summary.to_json() + "\n")
    ok = summary.faults_survived == summary.faults_injected
    return 0 if ok and summary.phase == "JOB_SUCCEEDED" else 1


def cmd_chaos(args: argparse.Namespace) -> int:
    from elastiq import rpc
    from elastiq.cli.chaos_spec import CHAOS_ACTIONS
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


def cmd_chaos_pod(args: argparse.Namespace) -> int:
    from elastiq.chaos.pod_faults import PodFaultOrder, inject

    order = PodFaultOrder(
        fault=args.action,
        job=args.job,
        namespace=args.namespace,
        pod=getattr(args, "pod", ""),
        node=getattr(args, "node", ""),
        grace_s=getattr(args, "grace", None),
        seed=getattr(args, "seed", None),
        api_server=args.api_server,
    )
    hit = inject(order)
    print(f"{args.action}: {', '.join(hit)} (job {args.job} in namespace {args.namespace})")
    return 0


def _add_operator_client_args(p: argparse.ArgumentParser) -> None:
    """How `status` and `chaos` reach the job (see _endpoint and _client)."""
    p.add_argument("--controller", default=None)
    p.add_argument(
        "--token-file", default=None, help=f"operator token file (${envvars.OPERATOR_TOKEN})"
    )
    p.add_argument(
        "--job",
        default="elastiq",
        help="the job: its local run file, or on Kubernetes the ElasticJob's name",
    )
    p.add_argument("--tls-ca", default="", help="CA that signed the controller's certificate")
    p.add_argument("--tls-cert", default="", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", default="", help="key of --tls-cert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastiq", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default=None, help="elastiq log level (default WARNING for run)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job on this machine (controller + agents)")
    _add_job_args(run)
    add_flags(
        run.add_argument_group("local run (LocalRunConfig)"),
        LocalRunConfig,
        skip=_RUN_SKIP,
        env=_RUN_ENV,
    )
    run.add_argument(
        "--chaos",
        action="append",
        default=[],
        help="fault by (rank, step): kill-worker:rank=2,step=50 | hang:rank=1,step=30 | "
        "kill-node:node=node1,step=40 | kill-before-snapshot:rank=1,step=15 (repeatable)",
    )
    run.add_argument(
        "--add-node-at",
        type=int,
        action="append",
        default=[],
        metavar="STEP",
        help="start one more node when the job reaches STEP; its workers join the running "
        "job, a scale-out rehearsal (repeatable)",
    )
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser("controller", help="run the controller")
    _add_job_args(ctl)
    add_flags(
        ctl.add_argument_group("control plane (ControllerConfig)"),
        ControllerConfig,
        skip=_CONTROLLER_SKIP,
    )
    add_flags(ctl.add_argument_group("server (ServerConfig)"), ServerConfig, env=_SERVER_ENV)
    ctl.add_argument(
        "--agent-token-file",
        default=None,
        help=f"file holding the token agents register with (default: ${envvars.AGENT_TOKEN})",
    )
    ctl.add_argument(
        "--operator-token-file",
        default=None,
        help=f"file holding the token for status and chaos (default: ${envvars.OPERATOR_TOKEN})",
    )
    ctl.add_argument(
        "--insecure",
        action="store_true",
        help="accept calls without tokens: only on a machine no one else can reach",
    )
    ctl.add_argument("--port-file", default="", help="write the bound port here")
    ctl.add_argument(
        "--linger",
        dest="linger_s",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="after the job ends, keep answering (status) this long before exiting",
    )
    ctl.add_argument(
        "--job-config",
        default="",
        help="the job as a JSON file (JobConfig's fields), instead of the job flags",
    )
    ctl.set_defaults(func=cmd_controller)

    agent = sub.add_parser("agent", help="run a node agent")
    add_flags(agent, AgentConfig, skip=_AGENT_SKIP, env=_AGENT_ENV)
    agent.add_argument(
        "--controller",
        default=None,
        help=f"host:port[,host:port...] (default: ${envvars.CONTROLLER})",
    )
    agent.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the agent token (default: ${envvars.AGENT_TOKEN})",
    )
    agent.set_defaults(func=cmd_agent)

    op = sub.add_parser("operator", help="run the Kubernetes operator for ElasticJobs")
    add_flags(op, OperatorConfig, skip=("namespaces",))
    scope = op.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    op.set_defaults(func=cmd_operator)

    host = sub.add_parser(
        "worker-host",
        help="run a pod's workers for its agent sidecar (the training container's command)",
    )
    add_flags(host, WorkerHostConfig, env={"socket_path": envvars.AGENT_SOCKET})
    host.set_defaults(func=cmd_worker_host)

    status = sub.add_parser("status", help="members, generation, plan, last events")
    _add_operator_client_args(status)
    status.add_argument("--events", type=int, default=10)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    chaos = sub.add_parser("chaos", help="inject a fault into a running job")
    _add_operator_client_args(chaos)
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
    for name, what in (
        ("delete-pod", "Kubernetes: delete one of the ElasticJob's (--job) worker pods"),
        ("evict-pod", "Kubernetes: evict one (as a node drain does)"),
        ("kill-node-pods", "Kubernetes: kill every pod of the job on one node (grace 0)"),
    ):
        p = chaos_sub.add_parser(name, help=what)
        p.add_argument("--namespace", default="default", help="the ElasticJob's namespace")
        p.add_argument("--api-server", default="", help="API server URL (default: kubeconfig)")
        if name == "kill-node-pods":
            p.add_argument("--node", required=True, help="the Kubernetes node")
        else:
            p.add_argument("--pod", default="", help="the pod (default: a running one at random)")
            p.add_argument("--seed", type=int, default=None, help="seed of the random choice")
        if name == "delete-pod":
            p.add_argument("--grace", type=int, default=None, help="grace seconds (0: SIGKILL)")
        p.set_defaults(func=cmd_chaos_pod)
    p = chaos_sub.add_parser(
        "run", help="run a job on real processes through a timed schedule of faults"
    )
    p.add_argument("scenario", help="the scenario (YAML; see elastiq/chaos/scenario.py)")
    p.add_argument("--work-dir", default="", help="logs and state (default runs/chaos-<time>)")
    p.add_argument("--summary-json", default="", help="also write the summary here")
    p.set_defaults(func=cmd_chaos_run)
    ckpt.register(sub)
    data.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default_level = (
        "WARNING" if args.command in ("run", "status", "chaos", "ckpt", "data") else "INFO"
    )
    level = args.log_level or envvars.resolve(None, envvars.LOG_LEVEL, default_level, str)
    args.log_level = level
    logs.setup(level, role=args.command)
    try:
        code: int = args.func(args)
        return code
    except ValueError as exc:
        print(f"elastiq {args.command}: {exc}", file=sys.stderr)
        return 2
    except (rpc.RpcRetryable, rpc.RpcRejected) as exc:
        print(
            f"elastiq {args.command}: the controller did not answer: {exc} (is the address "
            "right, and does it expect TLS (--tls-ca) or another token?)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # `elastiq run` stopped by SIGTERM (local_run)
        print(f"elastiq {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
