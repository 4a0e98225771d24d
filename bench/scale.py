"""The control plane at scale: a real controller on a real etcd, simulated agents (issue 15).

    python bench/scale.py --workers 1000            # 250 simulated nodes of 4 slots

Prints one JSON line per size: time to the first plan on every node, steady-state
controller CPU (seconds per second) and RSS, heartbeats per second, etcd puts and bytes
received per second in steady state, the plan's size on the wire, and, for one node
lost, the time from the loss to the new plan on every survivor (p50/p99/max).

First step of issue 15: data parallelism only, one failure kind; the pipeline layouts,
5% of nodes lost, joins of 100 nodes and the stragglers are still to come.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench.sim_agents import SimNode
from elastiq import envvars
from elastiq.secret_files import new_token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _etcd_counters(port: int) -> tuple[float, float]:
    """(puts, client bytes received) from etcd's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    puts = received = 0.0
    for line in text.splitlines():
        if line.startswith("etcd_mvcc_put_total "):
            puts = float(line.split()[1])
        elif line.startswith("etcd_network_client_grpc_received_bytes_total "):
            received = float(line.split()[1])
    return puts, received


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": -1.0, "p99": -1.0, "max": -1.0}
    s = sorted(values)
    return {
        "p50": round(s[len(s) // 2], 4),
        "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 4),
        "max": round(s[-1], 4),
    }


async def _measure(
    address: str, token: str, controller_pid: int, etcd_port: int, workers: int, steady_s: float
) -> dict[str, object]:
    nodes = [SimNode(address, token, f"sim{i:05d}") for i in range(workers // 4)]
    started = time.monotonic()
    for batch in range(0, len(nodes), 50):
        await asyncio.gather(*(n.start() for n in nodes[batch : batch + 50]))
    registered = time.monotonic()
    deadline = time.monotonic() + 300
    while not all(1 in n.plan_seen for n in nodes):
        if time.monotonic() > deadline:
            raise TimeoutError("generation 1 did not reach every node")
        await asyncio.sleep(0.05)
    first_plan = max(n.plan_seen[1] for n in nodes) - registered
    await asyncio.sleep(3.0)  # past the first joins
    cpu0, (puts0, bytes0), t0 = (
        _cpu_seconds(controller_pid),
        _etcd_counters(etcd_port),
        time.monotonic(),
    )
    await asyncio.sleep(steady_s)
    cpu1, (puts1, bytes1), t1 = (
        _cpu_seconds(controller_pid),
        _etcd_counters(etcd_port),
        time.monotonic(),
    )
    span = t1 - t0
    victim, survivors = (
        nodes[len(nodes) // 2],
        [n for n in nodes if n is not nodes[len(nodes) // 2]],
    )
    generation = max(n.generation for n in survivors)
    lost_at = time.monotonic()
    await victim.lose()
    deadline = time.monotonic() + 120
    while not all(generation + 1 in n.plan_seen for n in survivors):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    delivered = [
        n.plan_seen[generation + 1] - lost_at for n in survivors if generation + 1 in n.plan_seen
    ]
    result = {
        "workers": workers,
        "nodes": len(nodes),
        "register_all_s": round(registered - started, 3),
        "first_plan_to_all_s": round(first_plan, 3),
        "controller_cpu_s_per_s": round((cpu1 - cpu0) / span, 3),
        "controller_rss_mib": round(_rss_mib(controller_pid), 1),
        "heartbeats_per_s": round(len(nodes) / 0.5, 1),
        "etcd_puts_per_s": round((puts1 - puts0) / span, 2),
        "etcd_bytes_in_per_s": round((bytes1 - bytes0) / span, 1),
        "one_node_lost_plan_delivered_s": _quantiles(delivered),
        "survivors_reached": f"{len(delivered)}/{len(survivors)}",
    }
    for n in nodes:
        await n.lose()
    return result


def run_size(workers: int, steady_s: float) -> dict[str, object]:
    work = tempfile.mkdtemp(prefix="elastiq-scale-")
    etcd_bin = shutil.which("etcd")
    if etcd_bin is None:
        raise SystemExit("etcd is not installed (bash dev.sh setup test installs it)")
    etcd_port, peer = _free_port(), _free_port()
    etcd = subprocess.Popen(
        [
            etcd_bin,
            "--data-dir",
            os.path.join(work, "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent_token, operator_token = new_token(), new_token()
    env = {**os.environ, envvars.AGENT_TOKEN: agent_token, envvars.OPERATOR_TOKEN: operator_token}
    port = _free_port()
    controller = None
    try:
        _wait_port(etcd_port, etcd, "etcd")
        log = open(os.path.join(work, "controller.log"), "wb")  # noqa: SIM115
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elastiq.cli",
                "--log-level",
                "WARNING",
                "controller",
                "--store",
                f"etcd://127.0.0.1:{etcd_port}",
                "--port",
                str(port),
                "--min-workers",
                str(workers),
                "--settle",
                "1",
                "--steps",
                "1000000",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        _wait_port(port, controller, "controller")
        return asyncio.run(
            _measure(f"127.0.0.1:{port}", agent_token, controller.pid, etcd_port, workers, steady_s)
        )
    finally:
        for proc in (controller, etcd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, action="append", default=[])
    parser.add_argument("--steady", type=float, default=10.0, help="steady-state seconds")
    args = parser.parse_args()
    for workers in args.workers or [1000]:
        print(json.dumps(run_size(workers, args.steady)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
