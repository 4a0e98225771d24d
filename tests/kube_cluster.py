"""A Kubernetes stand-in for the operator's tests: kmock's API emulator, a local
"kubelet" that runs pods as processes, and the operator in a thread.

No kube-apiserver can run on this machine, so `kmock.KubernetesEmulator` (a real HTTP
API over an in-memory store) stands in for it, with the little more of an API server
the operator relies on (`ApiServer`): uids, creation times, `metadata.generation`
bumped on spec changes, and garbage collection through ownerReferences. The
`LocalKubelet` stands in for the nodes: it runs each pod's containers as local
processes (command and args, env with `fieldRef`/`secretKeyRef` resolved, `$(VAR)`
expanded, emptyDir and configMap volumes as directories, native sidecars first with
their startup probe), writes the pod's phase back, restarts containers under
`restartPolicy: Always`, and kills a pod's processes when the pod is deleted. It also
plays the Deployment controller, making a Deployment's pods. Everything else is real:
the operator, its kopf daemon, the elastiq controller, agents, worker hosts, workers.

Cluster DNS cannot be emulated: the operator is told that a job's controller is at
127.0.0.1 (`controller_host_format`), and the job spec gives free ports.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock

from elastiq.kube import operator
from elastiq.kube.job_runner import OperatorConfig

#: discovery of the resources the operator and kubelet use
RESOURCES = {
    "v1/pods": ("Pod", ()),
    "v1/services": ("Service", ()),
    "v1/configmaps": ("ConfigMap", ()),
    "v1/secrets": ("Secret", ()),
    "v1/events": ("Event", ()),
    "apps/v1/deployments": ("Deployment", ()),
    "elastiq.dev/v1alpha1/elasticjobs": ("ElasticJob", ("status", "scale")),
}
#: cluster-scoped ones kopf looks for at start-up
CLUSTER_RESOURCES = {
    "v1/namespaces": "Namespace",
    "apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition",
}
_PLURALS = {kind: key for key, (kind, _) in RESOURCES.items()}
_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus uids, generations and ownerReference garbage collection."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, (kind, subresources) in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=True, verbs=_VERBS, subresources=set(subresources)
            )
        for key, kind in CLUSTER_RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=_VERBS)

    async def _handle(self, request: Any) -> Any:
        if request.subresource == "eviction" and request.resource is not None:
            return await self._evict(request)
        data = request.data if isinstance(request.data, dict) else None
        if request.resource is not None and data is not None and request.subresource is None:
            if request.action == kmock.action.CREATE:
                meta = data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):  # kopf's Events
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta.setdefault("namespace", request.namespace)
                meta["generation"] = 1
                # one fixed version: kopf's JSON patches "test" it, and this emulator has no
                # optimistic concurrency to offer (its writes apply in arrival order)
                meta["resourceVersion"] = "1"
                if request.resource.plural == "pods":
                    data.setdefault("status", {"phase": "Pending"})
            elif request.action == kmock.action.UPDATE and "spec" in data:
                current = self._find(request.resource, request.namespace, request.name)
                generation = (current or {}).get("metadata", {}).get("generation", 1)
                data.setdefault("metadata", {})["generation"] = generation + 1
        gone_uid = None
        if request.action in (kmock.action.DELETE, kmock.action.UPDATE) and request.name:
            # a delete, or the update that drops the last finalizer of a deleted object
            current = self._find(request.resource, request.namespace, request.name)
            gone_uid = (current or {}).get("metadata", {}).get("uid")
        response = await super()._handle(request)
        if gone_uid and self._find(request.resource, request.namespace, request.name) is None:
            await self._collect_dependents(gone_uid)
        return response

    async def _evict(self, request: Any) -> Any:
        """POST pods/NAME/eviction: no PodDisruptionBudget here, so the pod goes."""
        async with self._lock:
            for (res, ns, name), obj in self.objects.items():
                key = (request.resource, request.namespace, request.name)
                if (res, ns, name) == key and not obj.deleted:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[res].put({"type": "DELETED", "object": raw})
                    return aiohttp.web.json_response(
                        {"kind": "Status", "status": "Success", "code": 201}, status=201
                    )
        return aiohttp.web.json_response(
            {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound"}, status=404
        )

    def _find(
        self, resource: Any, namespace: str | None, name: str | None
    ) -> dict[str, Any] | None:
        for (res, ns, n), obj in self.objects.items():
            if res == resource and ns == namespace and n == name and not obj.deleted:
                raw: dict[str, Any] = obj.raw
                return raw
        return None

    async def _collect_dependents(self, owner_uid: str) -> None:
        """What a real API server's garbage collector does for ownerReferences."""
        doomed = []
        async with self._lock:
            for key, obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
                if any(o.get("uid") == owner_uid for o in owners):
                    raw = obj.raw
                    obj.delete()
                    doomed.append((key, raw))
            for (res, _, _), raw in doomed:
                await self._buses[res].put({"type": "DELETED", "object": raw})
        for _, raw in doomed:
            await self._collect_dependents(raw["metadata"]["uid"])


class EmulatedCluster:
    """The emulator on a loopback port, in a thread with its own event loop."""

    def __init__(self) -> None:
        self.api: ApiServer | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def __enter__(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the API emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            async with ApiServer() as api, kmock.Server(api) as server:
                self.api = api
                self.url = str(server.url).rstrip("/")
                self._ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())

    # a tiny JSON client ---------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {
            "Content-Type": "application/merge-patch+json"
            if method == "PATCH"
            else "application/json"
        }
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return json.loads(text) if text else None

    @staticmethod
    def path(kind: str, namespace: str, name: str = "") -> str:
        key = _PLURALS[kind]
        group_version, plural = key.rsplit("/", 1)
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        reply = self.request("GET", self.path(kind, namespace)) or {}
        return list(reply.get("items") or [])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.request("GET", self.path(kind, namespace, name))
        return obj

    def create(self, obj: dict[str, Any]) -> Any:
        return self.request("POST", self.path(obj["kind"], obj["metadata"]["namespace"]), obj)

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", self.path(kind, namespace, name), body)

    def delete(self, kind: str, namespace: str, name: str) -> Any:
        return self.request("DELETE", self.path(kind, namespace, name))


@dataclass(slots=True)
class _Container:
    spec: dict[str, Any]
    sidecar: bool
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exit_code: int | None = None


@dataclass(slots=True)
class _RunningPod:
    name: str
    namespace: str
    uid: str
    restart_policy: str
    root: str
    env_base: dict[str, str]
    containers: list[_Container] = field(default_factory=list)
    phase: str = "Pending"
    started: bool = False


class LocalKubelet:
    """Runs the emulator's pods as local processes; see the module docstring."""

    def __init__(self, cluster: EmulatedCluster, namespace: str, workdir: str) -> None:
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.pods: dict[str, _RunningPod] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self._logs: list[Any] = []

    def __enter__(self) -> LocalKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for pod in list(self.pods.values()):
            self._kill(pod, grace_s=2.0)
        for fh in self._logs:
            fh.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_deployments()
                self._sync_pods()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                print(f"kubelet: {exc}", file=sys.stderr)
            self._stop.wait(0.2)

    # the Deployment controller's part -------------------------------------------------
    def _sync_deployments(self) -> None:
        pods = self.cluster.list("Pod", self.namespace)
        for dep in self.cluster.list("Deployment", self.namespace):
            uid = dep["metadata"]["uid"]
            mine = [
                p
                for p in pods
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
            ]
            for i in range(len(mine), int(dep["spec"].get("replicas", 1))):
                template = dep["spec"]["template"]
                self.cluster.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": f"{dep['metadata']['name']}-{uuid.uuid4().hex[:5]}{i}",
                            "namespace": self.namespace,
                            "labels": template["metadata"].get("labels", {}),
                            "ownerReferences": [
                                {
                                    "apiVersion": "apps/v1",
                                    "kind": "Deployment",
                                    "uid": uid,
                                    "name": dep["metadata"]["name"],
                                    "controller": True,
                                }
                            ],
                        },
                        "spec": template["spec"],
                    }
                )

    # the kubelet's part ------------------------------------------------------------------
    def _sync_pods(self) -> None:
        listed = {p["metadata"]["name"]: p for p in self.cluster.list("Pod", self.namespace)}
        for name, pod in list(self.pods.items()):
            obj = listed.get(name)
            if (
                obj is None
                or obj["metadata"].get("uid") != pod.uid
                or obj["metadata"].get("deletionTimestamp")
            ):
                self._kill(pod, grace_s=2.0)
                del self.pods[name]
        for name, obj in listed.items():
            if name not in self.pods and obj.get("status", {}).get("phase") in ("Pending", None):
                self.pods[name] = self._start(obj)
        for pod in list(self.pods.values()):
            self._tend(pod)

    def _start(self, obj: dict[str, Any]) -> _RunningPod:
        meta, spec = obj["metadata"], obj["spec"]
        root = os.path.join(self.workdir, "pods", meta["name"])
        os.makedirs(root, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIQ_")}
        pod = _RunningPod(
            name=meta["name"],
            namespace=self.namespace,
            uid=meta["uid"],
            restart_policy=spec.get("restartPolicy", "Always"),
            root=root,
            env_base=base,
        )
        for vol in spec.get("volumes") or []:
            path = os.path.join(root, "volumes", vol["name"])
            os.makedirs(path, exist_ok=True)
            os.chmod(path, 0o700)
            if "configMap" in vol:
                cm = self.cluster.get("ConfigMap", self.namespace, vol["configMap"]["name"]) or {}
                for key, value in (cm.get("data") or {}).items():
                    with open(os.path.join(path, key), "w", encoding="utf-8") as fh:
                        fh.write(value)
        for c in spec.get("initContainers") or []:
            pod.containers.append(_Container(c, sidecar=c.get("restartPolicy") == "Always"))
        for c in spec.get("containers") or []:
            pod.containers.append(_Container(c, sidecar=False))
        return pod

    def _local(self, pod: _RunningPod, container: dict[str, Any], text: str) -> str:
        for mount in container.get("volumeMounts") or []:
            local = os.path.join(pod.root, "volumes", mount["name"])
            text = text.replace(mount["mountPath"], local)
        return text

    def _env(self, pod: _RunningPod, container: dict[str, Any]) -> dict[str, str]:
        env = dict(pod.env_base)
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = self._local(pod, container, item["value"])
                continue
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {
                    "metadata.name": pod.name,
                    "metadata.namespace": pod.namespace,
                    "status.podIP": "127.0.0.1",
                }[path]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.cluster.get("Secret", self.namespace, ref["name"]) or {}
                if ref["key"] in (secret.get("data") or {}):
                    env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
                else:
                    env[item["name"]] = (secret.get("stringData") or {})[ref["key"]]
        return env

    def _run(self, pod: _RunningPod, c: _Container) -> None:
        env = self._env(pod, c.spec)
        argv = [*c.spec.get("command", []), *c.spec.get("args", [])]
        argv = [
            re.sub(
                r"\$\((\w+)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                self._local(pod, c.spec, a),
            )
            for a in argv
        ]
        if argv and argv[0] == "elastiq":  # the image's entry point
            argv = [sys.executable, "-m", "elastiq.cli", *argv[1:]]
        log = open(os.path.join(self.workdir, f"{pod.name}-{c.spec['name']}.log"), "ab")  # noqa: SIM115
        self._logs.append(log)
        c.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=pod.root,
            start_new_session=True,
        )
        c.exit_code = None

    def _probe_ok(self, pod: _RunningPod, c: _Container) -> bool:
        probe = (c.spec.get("startupProbe") or {}).get("exec")
        if not probe:
            return True
        argv = [self._local(pod, c.spec, a) for a in probe["command"]]
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0

    def _tend(self, pod: _RunningPod) -> None:
        if pod.phase in ("Succeeded", "Failed"):
            return
        if not pod.started:
            for c in pod.containers:
                if c.sidecar and c.proc is None:
                    self._run(pod, c)
            if not all(self._probe_ok(pod, c) for c in pod.containers if c.sidecar):
                return
            for c in pod.containers:
                if not c.sidecar:
                    self._run(pod, c)
            pod.started = True
            self._write_status(pod, "Running")
            return
        mains = [c for c in pod.containers if not c.sidecar]
        for c in pod.containers:
            if c.proc is None or c.exit_code is not None:
                continue
            code = c.proc.poll()
            if code is None:
                continue
            c.exit_code = code
            if (
                c.sidecar
                or pod.restart_policy == "Always"
                or (pod.restart_policy == "OnFailure" and code != 0)
            ):
                c.restarts += 1
                self._run(pod, c)
        if pod.restart_policy == "Never" and all(c.exit_code is not None for c in mains):
            ok = all(c.exit_code == 0 for c in mains)
            self._kill(pod, grace_s=5.0)
            self._write_status(pod, "Succeeded" if ok else "Failed")

    def _write_status(self, pod: _RunningPod, phase: str) -> None:
        pod.phase = phase
        status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1"}
        if phase == "Failed":
            codes = {c.spec["name"]: c.exit_code for c in pod.containers if not c.sidecar}
            status["message"] = f"containers exited: {codes}"
        self.cluster.request(
            "PATCH",
            self.cluster.path("Pod", pod.namespace, pod.name) + "/status",
            {"status": status},
        )

    def _kill(self, pod: _RunningPod, grace_s: float) -> None:
        procs = [c.proc for c in pod.containers if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)


class OperatorThread:
    """`elastiq operator` in a thread, against the emulator."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            operator.run(self.config, stop_flag=self._stop, ready_flag=self._ready)
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def __enter__(self) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(60) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def wait_until(what: str, predicate: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
