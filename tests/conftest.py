"""Shared fixtures: a real etcd on free loopback ports, process hygiene helpers, and
failure-free reference runs shared by every end-to-end test that compares with one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.cluster import JOB, Reference, ReferenceRuns, run_reference


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--extended",
        action="store_true",
        help="also run the extended variants (more positions and families of what the "
        "suite already proves once; about 5 minutes more)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="an extended variant: bash dev.sh test --extended")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError(
                "etcd is not installed: run `bash dev.sh setup test` (Debian etcd-server)"
            )
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [
                binary,
                "--name",
                "test",
                "--data-dir",
                self.data_dir,
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"test={peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={
                **os.environ,
                "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", ""),
            },
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with code {self.proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("etcd did not start listening within 15 s")

    def kill(self) -> None:
        """SIGKILL, as a crashed store: `start()` again brings it back on the same port
        with the same data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def etcd_server(tmp_path: object) -> Iterator[EtcdServer]:
    server = EtcdServer(os.path.join(str(tmp_path), "etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def failure_free(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRuns:
    """`failure_free(job, workers=4)`: a run of `job` without any failure, made once
    per session for each (job, workers) and shared: the same PP2 reference serves
    five tests. It saves a checkpoint every 10 steps, which does not change the
    computation, for the tests that resume from one."""
    made: dict[str, Reference] = {}

    def get(job: dict[str, object], workers: int = 4) -> Reference:
        key = json.dumps([{**JOB, **job}, workers], sort_keys=True)
        if key not in made:
            made[key] = run_reference(str(tmp_path_factory.mktemp("failure-free")), job, workers)
        return made[key]

    return get
