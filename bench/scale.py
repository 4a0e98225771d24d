"""The control plane at scale: a real controller on a real etcd, simulated agents (issue 15).

    python bench/scale.py                          # 1,000 / 4,000 / 10,000 workers
    python bench/scale.py --workers 1000 --layouts dp

Simulated nodes of 4 slots (bench/sim_agents.py) speak the real protocol to the
product's controller (a subprocess, `elastiq controller --store etcd://...`). For each
size and each layout (data parallel; PP8 and PP16 over DP) it prints, in one JSON line
per size:

- time to the first plan on every node;
- steady state: controller CPU seconds per second and RSS, heartbeats handled per
  second (the controller's own counter), etcd puts and bytes received per second;
- failure to plan delivered to every survivor (p50/p99/max) for one worker lost (its
  agent reports the exit), one node lost (its connection drops) and 5% of nodes lost
  at once, with etcd puts and bytes for the one-node failure;
- join of 100 new nodes: time to the generation that includes them, on every node;
- for each, the time until every member reported joining the new generation;
- stragglers: one node that stops reading its plan stream and one that answers 1 s
  late, while another node is lost: delivery to everyone else, when the stalled
  reader is lost (the controller's join timeout, 10 s here) and when the others'
  generation completes without it;
- the plan's size on the wire, and planner time per plan (the controller's histogram).

The 10,000-worker data-parallel run takes the longest (registration, then 2,500 plan
streams); the whole default run fits in 15 minutes on the 2-core machine.
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if not __package__:
    # run as `python bench/scale.py`: the simulator lives beside it, in bench support
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sim_agents import SimNode
from elastiq import envvars, rpc
from elastiq.config import JobConfig, ModelConfig
from elastiq.proto import elastiq_pb2 as pb
from elastiq.secret_files import new_token

LAYOUTS = {"dp": 1, "pp8": 8, "pp16": 16}
#: the controller's join timeout here: the stalled reader is lost this long after the
#: plan it never read (the default, 300 s, leaves room for real state transfers)
JOIN_TIMEOUT_S = 10.0
#: blocks of the simulated model: 16 blocks + embedding + head = 18 layer units, so
#: PP16 has a unit or two per stage
LAYERS = 16


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


def _scrape(port: int, names: Iterable[str]) -> dict[str, float]:
    """Unlabelled samples from a Prometheus text endpoint (etcd's or the controller's)."""
    wanted = set(names)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name] = float(value)
    return found


_ETCD = (
    "etcd_mvcc_put_total",
    "etcd_debugging_lease_renewed_total",
    "etcd_debugging_lease_granted_total",
    "etcd_network_client_grpc_received_bytes_total",
)
#: the controller's defaults: a node is lost after LEASE_TTLS of its intervals
LEASE_TTLS = 3.0 / 0.5


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": -1.0, "p99": -1.0, "max": -1.0}
    s = sorted(values)
    return {
        "p50": round(s[len(s) // 2], 3),
        "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 3),
        "max": round(s[-1], 3),
    }


class Run:
    """One controller on one etcd, with its simulated nodes."""

    def __init__(
        self,
        address: str,
        token: str,
        controller: subprocess.Popen[bytes],
        etcd_port: int,
        metrics_port: int,
    ) -> None:
        self.address, self.token = address, token
        self.controller, self.pid = controller, controller.pid
        self.etcd_port, self.metrics_port = etcd_port, metrics_port
        self.nodes: list[SimNode] = []
        self._made = 0
        self.operator_token = ""

    def _controller(self) -> dict[str, float]:
        return _scrape(
            self.metrics_port,
            (
                "elastiq_generation",
                "elastiq_members",
                "elastiq_heartbeats_total",
                "elastiq_plan_seconds_sum",
                "elastiq_plan_seconds_count",
                "elastiq_plan_bytes",
                "elastiq_completed_generation",
            ),
        )

    async def add_nodes(self, count: int) -> list[SimNode]:
        first = self._made
        shape = pb.ModelShape(unit_numel=JobConfig(model=ModelConfig(n_layers=LAYERS)).unit_numel())
        made = [
            # one observer in the whole run rebuilds and parses every plan
            SimNode(
                self.address,
                self.token,
                f"sim{first + i:05d}",
                observer=first + i == 0,
                model=shape,
            )
            for i in range(count)
        ]
        self._made += count
        for batch in range(0, len(made), 100):
            await asyncio.gather(*(n.start() for n in made[batch : batch + 100]))
        self.nodes += made
        return made

    async def settled(self, members: int, timeout: float = 120.0) -> int:
        """The generation whose plan has `members` workers, once the controller made it."""
        deadline = time.monotonic() + timeout
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            m = await asyncio.to_thread(self._controller)
            if int(m["elastiq_members"]) == members:
                return int(m["elastiq_generation"])
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"no plan of {members} workers within {timeout:g}s: the controller is at "
            f"generation {m.get('elastiq_generation')} with {m.get('elastiq_members')} "
            f"members, complete up to {m.get('elastiq_completed_generation')}; "
            f"{self.troubles()}; the controller's last events: {await self.events()}"
        )

    async def events(self, kinds: Iterable[str] = ("node_lost", "plan", "failed")) -> list[str]:
        """The controller's newest events of `kinds` (its Status, as `elastiq status`)."""
        client = rpc.ControllerClient(self.address, timeout_s=30.0)
        try:
            status = await client.call("Status", pb.StatusRequest(token=self.operator_token))
        finally:
            await client.close()
        wanted = set(kinds)
        return [f"{e.kind}: {e.message}"[:200] for e in status.events if e.kind in wanted][-12:]

    def troubles(self, clear: bool = False) -> dict[str, Any]:
        """What went wrong on the simulated side (since the last clear): simulator bugs,
        report calls not answered, sessions that broke and registered again (as agents
        do)."""
        failed = [f"{n.node_id}: {n.failure}" for n in self.nodes if n.failure]
        reports = [f"{n.node_id}: {r}" for n in self.nodes for r in n.reports_failed]
        sessions = [f"{n.node_id}: {r}" for n in self.nodes for r in n.sessions_broken]
        if clear:
            for n in self.nodes:
                n.reports_failed.clear()
                n.sessions_broken.clear()
        return {
            "simulator_failures": failed[:5],
            "reports_unanswered": len(reports),
            "reports_unanswered_first": reports[:2],
            "reconnects": len(sessions),
            "reconnects_first": sessions[:2],
        }

    async def delivered(
        self, generation: int, since: float, nodes: Sequence[SimNode], timeout: float = 60.0
    ) -> dict[str, Any]:
        """When `generation`'s plan reached each of `nodes`, from `since`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if all(generation in n.plan_seen for n in nodes):
                break
            await asyncio.sleep(0.02)
        times = [n.plan_seen[generation] - since for n in nodes if generation in n.plan_seen]
        sent = (await asyncio.to_thread(self._controller))["elastiq_plan_bytes"]
        return {**_quantiles(times), "reached": f"{len(times)}/{len(nodes)}", "plan_bytes": sent}

    async def completed(self, generation: int, since: float, timeout: float = 120.0) -> float:
        """Seconds from `since` until every member reported joining `generation`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            m = await asyncio.to_thread(self._controller)
            if m["elastiq_completed_generation"] >= generation:
                return round(time.monotonic() - since, 3)
            await asyncio.sleep(0.1)
        raise TimeoutError(f"generation {generation} not complete within {timeout:g}s")

    def check_alive(self) -> None:
        if self.controller.poll() is not None:
            raise RuntimeError(f"the controller exited ({self.controller.returncode}); see its log")

    def workers(self) -> int:
        return sum(len(n.workers) for n in self.nodes)

    async def lose(self, victims: Sequence[SimNode]) -> float:
        lost_at = time.monotonic()
        await asyncio.gather(*(v.lose() for v in victims))
        self.nodes = [n for n in self.nodes if n not in victims]
        return lost_at


async def _measure(run: Run, nodes: int, steady_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # between scenarios the generation completes (every member reported joining it),
    # then its RESUMED reports come in, so each failure starts from a settled job
    pause = 1.0
    started = time.monotonic()
    await run.add_nodes(nodes)
    registered = time.monotonic()
    out["register_all_s"] = round(registered - started, 2)
    first = await run.delivered(1, registered, run.nodes, timeout=300)
    out["first_plan_to_all_s"] = first["max"]  # after the last registration (settle: 1 s)
    await asyncio.sleep(3.0)  # past the first joins and heartbeat interval changes

    # steady state
    cpu0, etcd0, ctl0, t0 = (
        _cpu_seconds(run.pid),
        _scrape(run.etcd_port, _ETCD),
        run._controller(),
        time.monotonic(),
    )
    # at least one lease period, so that each node's store lease refresh falls in it
    interval = run.nodes[0]._interval
    await asyncio.sleep(max(steady_s, LEASE_TTLS * interval + 1.0))
    cpu1, etcd1, ctl1, t1 = (
        _cpu_seconds(run.pid),
        _scrape(run.etcd_port, _ETCD),
        run._controller(),
        time.monotonic(),
    )
    span = t1 - t0
    out["controller_cpu_s_per_s"] = round((cpu1 - cpu0) / span, 3)
    out["controller_rss_mib"] = round(_rss_mib(run.pid), 1)
    hb = ctl1["elastiq_heartbeats_total"] - ctl0["elastiq_heartbeats_total"]
    out["heartbeats_per_s"] = round(hb / span, 1)
    out["heartbeat_interval_s"] = interval
    delta = {k: etcd1[k] - etcd0[k] for k in _ETCD}
    requests = sum(delta[k] for k in _ETCD[:3])  # puts, keepalives, grants
    out["etcd_puts_per_s"] = round(delta["etcd_mvcc_put_total"] / span, 2)
    out["etcd_requests_per_s"] = round(requests / span, 2)
    out["etcd_bytes_in_per_s"] = round(
        delta["etcd_network_client_grpc_received_bytes_total"] / span, 1
    )
    lease_period = LEASE_TTLS * interval
    out["etcd_requests_per_node_per_lease_period"] = round(
        requests / span * lease_period / len(run.nodes), 3
    )
    out["start_and_steady_agent_side"] = run.troubles(clear=True)

    # one worker lost: its agent reports the exit
    victim_node = run.nodes[len(run.nodes) // 3]
    generation = max(n.generation for n in run.nodes)
    since = time.monotonic()
    await victim_node.exit_worker()
    g = await run.settled(run.workers())
    out["one_worker_lost"] = await run.delivered(g, since, run.nodes)
    out["one_worker_lost"]["generations"] = g - generation
    out["one_worker_lost"]["generation_complete_s"] = await run.completed(g, since)
    out["one_worker_lost"]["agent_side"] = run.troubles(clear=True)
    await asyncio.sleep(pause)

    # one node lost: its connection drops
    etcd0 = _scrape(run.etcd_port, _ETCD)
    generation = max(n.generation for n in run.nodes)
    since = await run.lose([run.nodes[len(run.nodes) // 2]])
    g = await run.settled(run.workers())
    out["one_node_lost"] = await run.delivered(g, since, run.nodes)
    etcd1 = _scrape(run.etcd_port, _ETCD)
    puts = etcd1["etcd_mvcc_put_total"] - etcd0["etcd_mvcc_put_total"]
    out["one_node_lost"]["etcd_puts"] = puts
    out["one_node_lost"]["etcd_bytes_in"] = (
        etcd1["etcd_network_client_grpc_received_bytes_total"]
        - etcd0["etcd_network_client_grpc_received_bytes_total"]
    )
    out["one_node_lost"]["generation_complete_s"] = await run.completed(g, since)
    out["one_node_lost"]["agent_side"] = run.troubles(clear=True)
    await asyncio.sleep(pause)

    # 5% of nodes lost at once
    count = max(1, len(run.nodes) // 20)
    generation = max(n.generation for n in run.nodes)
    since = await run.lose(run.nodes[1 : 1 + 20 * count : 20])
    g = await run.settled(run.workers())
    out["five_percent_lost"] = await run.delivered(g, since, run.nodes)
    out["five_percent_lost"]["generations"] = g - generation
    out["five_percent_lost"]["nodes_lost"] = count
    out["five_percent_lost"]["generation_complete_s"] = await run.completed(g, since)
    out["five_percent_lost"]["agent_side"] = run.troubles(clear=True)
    await asyncio.sleep(pause)

    # 100 new nodes join
    since = time.monotonic()
    await run.add_nodes(100)
    registered = time.monotonic() - since
    g = await run.settled(run.workers())
    out["join_100_nodes"] = await run.delivered(g, since, run.nodes)
    out["join_100_nodes"]["registering_s"] = round(registered, 3)
    out["join_100_nodes"]["generation_complete_s"] = await run.completed(g, since)
    out["join_100_nodes"]["agent_side"] = run.troubles(clear=True)
    await asyncio.sleep(pause)

    # stragglers: one stops reading its plan stream, one answers 1 s late; a node is lost
    stalled, slow = run.nodes[5], run.nodes[7]
    stalled.stall_reading()
    slow.slow_s = 1.0
    await asyncio.sleep(1.0)
    since = await run.lose([run.nodes[-3]])
    g = await run.settled(run.workers())
    others = [n for n in run.nodes if n is not stalled and n is not slow]
    out["stragglers_one_node_lost"] = {
        "others": await run.delivered(g, since, others),
        "slow_node_s": (await run.delivered(g, since, [slow], timeout=10))["max"],
        "stalled_reader_reached": g in stalled.plan_seen,
    }
    # the stalled reader never joins: the controller loses it after its join timeout
    # and the others' generation completes without it
    dropped = await run.settled(run.workers() - len(stalled.workers), timeout=JOIN_TIMEOUT_S + 60)
    lost_after = time.monotonic() - since
    await run.lose([stalled])
    out["stragglers_one_node_lost"]["stalled_reader_lost_after_s"] = round(lost_after, 3)
    out["stragglers_one_node_lost"]["others_complete_s"] = await run.completed(dropped, since)

    ctl = run._controller()
    out["plan_bytes"] = int(ctl["elastiq_plan_bytes"])
    out["plan_fanout_mb_per_generation"] = round(
        ctl["elastiq_plan_bytes"] * len(run.nodes) / 1e6, 1
    )
    out["planner_ms_per_plan"] = round(
        1000 * ctl["elastiq_plan_seconds_sum"] / max(1.0, ctl["elastiq_plan_seconds_count"]), 1
    )
    out["stragglers_one_node_lost"]["agent_side"] = run.troubles(clear=True)
    for n in run.nodes:
        await n.lose()
    return out


async def run_layout(workers: int, stages: int, steady_s: float) -> dict[str, Any]:
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
    port, metrics_port = _free_port(), _free_port()
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
                "--metrics-port",
                str(metrics_port),
                "--min-workers",
                str(workers),
                "--settle",
                "1",
                "--steps",
                "1000000",
                "--pipeline-stages",
                str(stages),
                "--layers",
                str(LAYERS),
                "--join-timeout",
                str(JOIN_TIMEOUT_S),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        _wait_port(port, controller, "controller")
        run = Run(f"127.0.0.1:{port}", agent_token, controller, etcd_port, metrics_port)
        run.operator_token = operator_token
        return await _measure(run, workers // 4, steady_s)
    except BaseException:
        with open(os.path.join(work, "controller.log"), encoding="utf-8", errors="replace") as fh:
            lines = [line[:300] for line in fh.read().splitlines()]
        sys.stderr.write("controller log (tail):\n" + "\n".join(lines[-30:]) + "\n")
        raise
    finally:
        for proc in (controller, etcd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, action="append", default=[])
    parser.add_argument("--layouts", default="dp,pp8,pp16", help="of " + ",".join(LAYOUTS))
    parser.add_argument("--steady", type=float, default=8.0, help="steady-state seconds")
    args = parser.parse_args()
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        parser.error(f"unknown layouts {unknown}: use some of {', '.join(LAYOUTS)}")
    sizes = args.workers or [1000, 4000, 10000]
    for workers in sizes:
        if workers % 4 or workers < 400:
            parser.error(f"--workers {workers}: use a multiple of 4, at least 400")
    # one event loop for every run: gRPC's asyncio poller outlives a loop it began on
    asyncio.run(_run_sizes(sizes, layouts, args.steady))
    return 0


async def _run_sizes(sizes: list[int], layouts: list[str], steady_s: float) -> None:
    for workers in sizes:
        started = time.monotonic()
        line: dict[str, object] = {"workers": workers, "nodes": workers // 4}
        for name in layouts:
            line[name] = await run_layout(workers, LAYOUTS[name], steady_s)
        line["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
