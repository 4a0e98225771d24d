"""`elastiq run`: a whole job on one machine, the way a cluster runs it.

The controller runs in this process (embedded store unless told otherwise);
each node is a real `elastiq agent` subprocess owning its worker processes, so
chaos kills real processes with real signals. While the job runs the user sees a
progress bar (step, loss, tokens/s, generation), each membership event as it
happens, and at the end a summary: steps, final loss, failures survived and the
recovery time of each. The controller's address and token are written to a run
file so `elastiq status` and `elastiq chaos` find the job without flags.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from elastiq import envvars
from elastiq.child_processes import reap
from elastiq.cli.chaos_spec import ChaosSpec
from elastiq.cli.local_run_config import LocalRunConfig, run_file_path
from elastiq.cli.progress import ProgressView
from elastiq.cli.summary import RunSummary, print_summary, summarize
from elastiq.config import JobConfig
from elastiq.controller.job import ControllerConfig, JobController
from elastiq.controller.server import Controller, ServerConfig
from elastiq.controller.service import Credentials
from elastiq.proto import elastiq_pb2 as pb
from elastiq.secret_files import new_token, write_private

log = logging.getLogger(__name__)


async def run_local_async(
    job: JobConfig,
    local: LocalRunConfig,
    out: TextIO = sys.stdout,
    on_status: Callable[[pb.StatusResponse], None] | None = None,
) -> RunSummary:
    """Run the job; `on_status` sees every status polled, the final one last."""
    late = [step for step in local.add_nodes_at if step >= job.steps]
    if late:
        raise ValueError(
            f"add_nodes_at {late}: the job ends at step {job.steps}, so a node added then "
            "would never join; pick steps below it"
        )
    run_dir = local.run_dir or os.path.join("runs", job.job)
    os.makedirs(run_dir, exist_ok=True)
    # a local run makes its own credentials: the agents get theirs in their environment
    # (readable by this user only), `elastiq status` and `chaos` the operator's from
    # the 0600 run file
    credentials = Credentials(agent_token=new_token(), operator_token=new_token())
    controller = Controller(
        job,
        ControllerConfig(
            min_workers=local.min_workers or local.workers,
            max_workers=local.max_workers or (local.workers if local.spare_nodes else 0),
            settle_s=local.settle_s,
            start_timeout_s=local.start_timeout_s,
            lease_ttl_s=local.lease_ttl_s,
            heartbeat_interval_s=min(0.5, local.lease_ttl_s / 3),
        ),
        ServerConfig(store=local.store, metrics_port=local.metrics_port),
        credentials,
    )
    await controller.start()
    address = f"127.0.0.1:{controller.port}"
    run_file = run_file_path(job.job)
    os.makedirs(os.path.dirname(run_file), mode=0o700, exist_ok=True)
    write_private(
        run_file,
        json.dumps(
            {
                "controller": address,
                "operator_token": credentials.operator_token,
                "pid": os.getpid(),
            }
        ),
    )
    agent_env = {**os.environ, envvars.AGENT_TOKEN: credentials.agent_token}
    nodes = local.workers // local.workers_per_node + local.spare_nodes
    agents: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    started = time.monotonic()
    print(
        f"elastiq: job {job.job}: {local.workers} workers on {nodes} node(s), controller {address}"
        + (f", metrics :{controller.metrics_port}" if controller.metrics_port else ""),
        file=out,
    )

    def start_agent(i: int) -> subprocess.Popen[bytes]:
        log_file = open(os.path.join(run_dir, f"node{i}.log"), "ab")  # noqa: SIM115
        logs.append(log_file)
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elastiq.cli",
                "--log-level",
                local.log_level,
                "agent",
                "--controller",
                address,
                "--node-id",
                f"node{i}",
                "--slots",
                str(local.workers_per_node),
                "--liveness-timeout",
                str(local.liveness_timeout_s),
                "--progress-timeout",
                str(local.progress_timeout_s),
                "--max-restarts",
                str(local.max_restarts),
                "--start-retries",
                str(local.start_retries),
                "--exit-with-parent",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=agent_env,
        )

    finished = False
    stop_catching_sigterm = _cancel_on_sigterm()
    try:
        for i in range(nodes):
            agents.append(start_agent(i))
        job_ctl = controller.job
        if job_ctl is None:
            raise RuntimeError("the local controller did not become leader")
        view = ProgressView(out, job.steps)
        pending = list(local.chaos)
        to_add = sorted(local.add_nodes_at)
        agent_restarts = [0] * nodes
        while not job_ctl.done.is_set():
            if job_ctl.layout is None:
                # a node that dies while the job starts (a pod crashing at start-up) is
                # started again, as Kubernetes restarts a pod; once training runs, a
                # lost node stays lost (chaos kill-node means it)
                for i, agent in enumerate(agents):
                    code = agent.poll()
                    if code is not None and agent_restarts[i] < local.start_retries:
                        agent_restarts[i] += 1
                        view.note(
                            f"node{i}'s agent exited ({code}) before the job started; "
                            f"starting it again ({agent_restarts[i]} of {local.start_retries})"
                        )
                        agents[i] = start_agent(i)
            status = job_ctl.status()
            view.update(status)
            if on_status is not None:
                on_status(status)
            if job_ctl.layout is not None:
                for spec in list(pending):
                    if _schedule_chaos(job_ctl, spec):
                        pending.remove(spec)
                while to_add and status.step >= to_add[0]:
                    to_add.pop(0)
                    view.note(
                        f"node{len(agents)} starts at step {status.step} (--add-node-at): "
                        f"{local.workers_per_node} more worker(s) join the running job"
                    )
                    agents.append(start_agent(len(agents)))
                    agent_restarts.append(local.start_retries)  # joins a running job
            if all(a.poll() is not None for a in agents):
                break
            try:
                await asyncio.wait_for(job_ctl.done.wait(), 0.2)
            except TimeoutError:
                pass
        status = job_ctl.status()
        view.update(status)
        view.finish()
        if on_status is not None:
            on_status(status)
        summary = summarize(status, time.monotonic() - started)
        print_summary(summary, out)
        if local.summary_json:
            summary.write_json(local.summary_json)
        finished = True
        return summary
    finally:
        stop_catching_sigterm()
        if not finished:  # stopped or failed: the agents would train on, unplanned
            for agent in agents:
                if agent.poll() is None:
                    agent.terminate()
        reap(agents)
        for fh in logs:
            fh.close()
        await controller.stop()
        try:
            os.remove(run_file)
        except OSError:
            pass


def _cancel_on_sigterm() -> Callable[[], None]:
    """SIGTERM (`kill`, `timeout`, a supervisor) ends the run as Ctrl-C does: the run
    is cancelled, so it stops its agents and removes its run file, where Python's
    default would exit at once and leave them training with nobody to stop them
    (the agents also die with this process, `exit_with_parent`, which covers
    SIGKILL). Returns what puts the previous handler back."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):  # not Unix, or not the main thread
        return lambda: None

    def restore() -> None:
        # remove_signal_handler leaves SIG_DFL: a caller's own handler comes back
        loop.remove_signal_handler(signal.SIGTERM)
        if previous is not None:  # None: set outside Python, left at SIG_DFL
            signal.signal(signal.SIGTERM, previous)

    return restore


def _schedule_chaos(job_ctl: JobController, spec: ChaosSpec) -> bool:
    """Hand a scheduled fault to the controller; False to retry (node not yet registered)."""
    if spec.action == "kill-node" and spec.node not in job_ctl.nodes:
        return False
    job_ctl.inject_chaos(spec.to_request())
    return True


def run_local(job: JobConfig, local: LocalRunConfig, out: TextIO = sys.stdout) -> RunSummary:
    """Run a job on this machine and return its summary (see `summarize`)."""
    return asyncio.run(run_local_async(job, local, out))
