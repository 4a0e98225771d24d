"""Prometheus metrics of the controller (prefix `elastiq_`, seconds and bytes).

Each controller owns its own registry, so several can live in one process (tests)
and a scrape sees exactly one job's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from elastiq.proto import elastiq_pb2 as pb

RECOVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.generation = Gauge("elastiq_generation", "Current plan generation", registry=r)
        self.members = Gauge("elastiq_members", "Workers in the current plan", registry=r)
        self.nodes = Gauge("elastiq_nodes", "Registered agents", registry=r)
        self.step = Gauge("elastiq_step", "Highest committed step reported", registry=r)
        self.loss = Gauge("elastiq_loss", "Training loss of the last reported step", registry=r)
        self.tokens_per_second = Gauge(
            "elastiq_tokens_per_second", "Training throughput (tokens/s)", registry=r
        )
        self.step_seconds = Gauge("elastiq_step_seconds", "Last reported step time", registry=r)
        self.failures = Counter(
            "elastiq_failures", "Membership losses handled", ["cause"], registry=r
        )
        self.recovery_seconds = Histogram(
            "elastiq_recovery_seconds",
            "Recovery time by phase",
            ["phase"],
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.checkpoint_blocking = Gauge(
            "elastiq_checkpoint_blocking_seconds",
            "Seconds the training loops were held by checkpoint saves (sum over workers)",
            registry=r,
        )
        self.checkpoint_step = Gauge(
            "elastiq_checkpoint_committed_step", "Newest committed checkpoint step", registry=r
        )
        self.checkpoints_skipped = Gauge(
            "elastiq_checkpoints_skipped",
            "Checkpoints due but skipped while the previous one was still being written "
            "(every rank skips together; the most any worker reports)",
            registry=r,
        )
        self.checkfree = Counter(
            "elastiq_checkfree_recoveries",
            "Stages rebuilt from their neighbours (the model is approximated)",
            registry=r,
        )
        self.rejected = Counter(
            "elastiq_rejected_requests",
            "Requests refused (bad token, stale, malformed)",
            ["reason"],
            registry=r,
        )
        self.goodput = Gauge(
            "elastiq_goodput_ratio", "Fraction of wall time spent in committed steps", registry=r
        )
        # the control plane's own load (issue 15: what grows with the job's size)
        self.heartbeats = Counter("elastiq_heartbeats", "Agent heartbeats handled", registry=r)
        self.plan_seconds = Histogram(
            "elastiq_plan_seconds",
            "Time to propose a generation's plan",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.completed_generation = Gauge(
            "elastiq_completed_generation",
            "Newest generation every member finished joining",
            registry=r,
        )
        self.plan_bytes = Gauge(
            "elastiq_plan_bytes", "Size of the current plan as sent to each agent", registry=r
        )

    def observe_progress(self, progress: Sequence[pb.WorkerProgress]) -> None:
        """The job's gauges from its workers' heartbeats: the most advanced worker's
        step, loss and speed; checkpoint holding time summed over workers."""
        if not progress:
            return
        newest = max(progress, key=lambda p: (p.step, p.wall_time))
        self.step.set(newest.step)
        self.loss.set(newest.loss)
        self.tokens_per_second.set(newest.tokens_per_s)
        self.step_seconds.set(newest.step_time_s)
        self.checkpoint_blocking.set(sum(p.checkpoint_held_s for p in progress))
        self.checkpoint_step.set(max(p.checkpoint_committed_step for p in progress))
        self.checkpoints_skipped.set(max(p.checkpoints_skipped for p in progress))

    def observe_recovery(self, record: pb.Recovery) -> None:
        for name, value in record.phases.items():
            self.recovery_seconds.labels(name).observe(value)
        self.recovery_seconds.labels("total").observe(record.resumed_time - record.failure_time)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])
