"""Contracts that keep the code base honest: generated stubs are fresh, layers
import only downward, each external client is imported by one adapter module."""

from __future__ import annotations

import ast
import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARTS = {
    "elastiq": "elastiq",
    "controller": "elastiq.controller",
    "agent": "elastiq.agent",
    "proto": "elastiq.proto",
    "checkpoint": "elastiq.checkpoint",
    "kube": "elastiq.kube",
}


def test_generated_stubs_match_the_proto(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)], check=True)
    for name in ("elastiq_pb2.py", "elastiq_pb2.pyi", "elastiq_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / name, ROOT / "proto" / name, shallow=False), (
            f"proto/{name} is stale: run `python proto/generate.py` and commit the result"
        )


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _sources(part: str) -> list[pathlib.Path]:
    return [p for p in (ROOT / part).rglob("*.py") if not p.name.startswith("elastiq_pb2")]


#: The layers, bottom up. A module may import its own layer and the ones below, never
#: one above or beside it. The shared base is elastiq/*.py (config, partition, lr,
#: logs, envvars and the fs/rpc adapters); the front end is elastiq/cli/ and the chaos
#: tool, elastiq/chaos/.
BASE = "base"
LAYERS: dict[str, tuple[str, ...]] = {
    # layer: the elastiq packages it may import (besides itself)
    "proto": (),
    BASE: ("elastiq.proto", BASE),
    "checkpoint": ("elastiq.proto", BASE, "elastiq.checkpoint"),
    "controller": ("elastiq.proto", BASE, "elastiq.checkpoint", "elastiq.controller"),
    "agent": ("elastiq.proto", BASE, "elastiq.agent"),
    "runtime": ("elastiq.proto", BASE, "elastiq.checkpoint", "elastiq.agent"),
    # the operator reads the controller's config types and talks to it over rpc only
    "kube": ("elastiq.proto", BASE, "elastiq.controller.job_state", "elastiq.kube"),
    "cli": ("*",),
}
BASE_MODULES = {f"elastiq.{p.stem}" for p in (ROOT / "elastiq").glob("*.py")} | {"elastiq"}


def _layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "elastiq":
        # the package's __init__ is the public API, on top like the command line
        return "cli" if rel[1] in ("cli", "chaos", "__init__.py") else BASE
    if rel[0] == "agent" and len(rel) > 2 and rel[1] == "runtime":
        return "runtime"
    return rel[0]


def _allowed(module: str, layer: str) -> bool:
    if not module.startswith("elastiq"):
        return True
    allowed = LAYERS[layer]
    if "*" in allowed:
        return True
    if layer == "agent" and module.startswith("elastiq.agent.runtime"):
        return False  # the node agent never imports the worker runtime (torch)
    if module in BASE_MODULES or module.startswith("elastiq.proto"):
        return BASE in allowed or module.startswith("elastiq.proto")
    return any(module == a or module.startswith(a + ".") for a in allowed if a != BASE)


def test_layers_import_only_downward() -> None:
    for part in PARTS:
        for path in _sources(part):
            if path.name == "generate.py":
                continue
            layer = _layer_of(path)
            bad = sorted(m for m in _imports(path) if not _allowed(m, layer))
            assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports {bad}"


def test_only_tests_and_benchmarks_import_the_front_end() -> None:
    for part in PARTS:
        for path in _sources(part):
            if _layer_of(path) == "cli":
                continue
            bad = [m for m in _imports(path) if m.startswith("elastiq.cli")]
            assert not bad, f"{path.relative_to(ROOT)} imports the front end: {bad}"


def test_plans_are_read_only_through_the_plan_layout() -> None:
    """A pb.Plan is read only by agent/plan_layout.py (the node agent and the worker
    parse it there); the controller writes it only in controller/wire.py."""
    for part in ("agent", "controller"):
        for path in _sources(part):
            if path.name in ("plan_layout.py", "wire.py") or path.name.endswith("pb2.py"):
                continue
            text = path.read_text(encoding="utf-8")
            for needle in ("plan.stages", "plan.assignments", "plan.buddy", "plan.moves"):
                assert needle not in text, f"{path.relative_to(ROOT)} reads {needle}"


def test_no_json_is_written_by_hand() -> None:
    """JSON comes from json.dumps or protobuf, never from f-strings."""
    for part in PARTS:
        for path in _sources(part):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.JoinedStr):
                    literal = "".join(
                        str(v.value) for v in node.values if isinstance(v, ast.Constant)
                    )
                    assert not literal.lstrip().startswith(('{"', "{'")), (
                        f"{path.relative_to(ROOT)}:{node.lineno} writes JSON by hand"
                    )


def test_each_external_client_is_imported_by_one_adapter_module() -> None:
    adapters = {
        "aetcd": {"controller/store_etcd.py"},
        "grpc": {"elastiq/rpc.py"},
        "fsspec": {"elastiq/fs.py"},
        "kubernetes": {"kube/api.py"},
        "kopf": {"kube/operator.py"},
        "crc32c": {"checkpoint/checksums.py"},
    }
    for client, allowed in adapters.items():
        users = set()
        for part in PARTS:
            for path in _sources(part):
                if any(m == client or m.startswith(client + ".") for m in _imports(path)):
                    users.add(f"{part}/{path.name}")
        users.discard("proto/generate.py")  # the stub generator uses grpc_tools
        assert users <= allowed, (
            f"{client} is imported outside its adapter: {sorted(users - allowed)}"
        )


def test_environment_variables_are_read_in_one_module() -> None:
    for part in PARTS:
        for path in _sources(part):
            if path.name in ("envvars.py",):
                continue
            text = path.read_text(encoding="utf-8")
            assert "os.environ.get(" not in text and "os.getenv(" not in text, (
                f"{part}/{path.name} reads the environment; go through elastiq.envvars"
            )


def test_library_code_does_not_assert_or_log_through_the_root_logger() -> None:
    for part in PARTS:
        for path in _sources(part):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
            assert not asserts, (
                f"{part}/{path.name}:{asserts}: raise a real error instead of assert"
            )
            for n in ast.walk(tree):
                if (
                    isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute)
                    and isinstance(n.func.value, ast.Name)
                    and n.func.value.id == "logging"
                    and n.func.attr in ("info", "warning", "error", "debug", "exception")
                ):
                    raise AssertionError(f"{part}/{path.name}:{n.lineno} logs via the root logger")


def test_modules_stay_well_under_800_lines() -> None:
    for part in PARTS:
        for path in _sources(part):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines < 800, f"{part}/{path.name} has {lines} lines"


def test_the_controller_and_agent_processes_start_without_importing_torch() -> None:
    """`elastiq agent` and `elastiq controller` run through the CLI; importing torch
    there cost 1.3 s of CPU per process, which delays every agent that joins."""
    code = (
        "import sys, elastiq.cli.main, elastiq.controller.server, elastiq.agent.agent; "
        "sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:] or "torch was imported"
