"""The operator's Kubernetes API client: the one module that imports `kubernetes`.

Where it sits: kube/operator.py calls these coroutines to create, list, read and
delete the objects a job is made of (kube/resources.py builds them) and to write the
job's status. Objects go in and come out as plain dicts (`_preload_content=False`), so
what the builders return is what is sent. The blocking client runs in a thread.

Errors follow kopf's taxonomy: `Conflict` (409, the object exists: creation is
idempotent) and `NotFound` (404) are answers, not failures; 429 and 5xx are
`Retryable`; any other 4xx is `Refused` (a bug or a spec the API server rejects).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3.exceptions

from elastiq.kube.job_spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

#: every call's timeout (connect, read), seconds
TIMEOUT_S = (5.0, 30.0)


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Retryable(KubeError):
    """429, 5xx, or no answer: try again later."""


class Refused(KubeError):
    """A 4xx other than 404/409: trying again will not help."""


@dataclass(frozen=True, slots=True)
class ApiEndpoint:
    """How to reach the API server: in the cluster (default), or a URL (kubectl proxy,
    or the tests' emulator; plain HTTP only for a loopback address)."""

    server: str = ""


class KubeApi:
    def __init__(self, endpoint: ApiEndpoint) -> None:
        if endpoint.server:
            config = kubernetes.client.Configuration()
            config.host = endpoint.server
        else:
            config = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=config)
        self._client = kubernetes.client.ApiClient(config)
        self._core = kubernetes.client.CoreV1Api(self._client)
        self._apps = kubernetes.client.AppsV1Api(self._client)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)

    def close(self) -> None:
        self._client.close()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.update(_preload_content=False, _request_timeout=TIMEOUT_S)

        def run() -> Any:
            try:
                response = fn(*args, **kwargs)
            except kubernetes.client.exceptions.ApiException as exc:
                raise _error(exc.status or 0, exc.reason or "", exc.body) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Retryable(0, f"no answer from the API server: {exc}") from exc
            data = response.data
            return json.loads(data) if data else {}

        return await asyncio.to_thread(run)

    # creation: idempotent ------------------------------------------------------------
    async def create(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; False if one of that name already exists (409)."""
        kind, ns = obj["kind"], obj["metadata"]["namespace"]
        creators: dict[str, Callable[..., Any]] = {
            "Pod": self._core.create_namespaced_pod,
            "Service": self._core.create_namespaced_service,
            "ConfigMap": self._core.create_namespaced_config_map,
            "Secret": self._core.create_namespaced_secret,
            "Deployment": self._apps.create_namespaced_deployment,
        }
        try:
            await self._call(creators[kind], ns, obj)
            return True
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise

    async def delete(
        self, kind: str, namespace: str, name: str, *, grace_s: int | None = None
    ) -> bool:
        """Delete one object (its dependents go in the background); False if gone.
        `grace_s` overrides the pod's termination grace period (0: SIGKILL at once)."""
        deleters: dict[str, Callable[..., Any]] = {
            "Pod": self._core.delete_namespaced_pod,
            "Service": self._core.delete_namespaced_service,
            "Deployment": self._apps.delete_namespaced_deployment,
        }
        options = {} if grace_s is None else {"grace_period_seconds": grace_s}
        try:
            await self._call(deleters[kind], name, namespace, **options)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    async def evict_pod(self, namespace: str, name: str) -> bool:
        """Evict a pod as a node drain would (PodDisruptionBudgets apply); False if gone.
        A 429 (a budget forbids it now) raises Retryable."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        try:
            await self._call(self._core.create_namespaced_pod_eviction, name, namespace, body)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    # reading -------------------------------------------------------------------------
    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        reply = await self._call(self._core.list_namespaced_pod, namespace, label_selector=selector)
        return list(reply.get("items") or [])

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self._call(
                self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
            return obj
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded; None if the Secret or the key is missing."""
        try:
            secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        raw = (secret.get("data") or {}).get(key)
        if raw is None:
            return (secret.get("stringData") or {}).get(key)
        return base64.b64decode(raw).decode("utf-8")

    # writing the job's status --------------------------------------------------------
    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (the status is written whole each time)."""
        await self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
        )


def _error(status: int, reason: str, body: Any) -> KubeError:
    message = reason
    try:
        message = json.loads(body).get("message") or reason
    except (TypeError, ValueError, AttributeError):
        pass
    if status in (404, 409):
        return KubeError(status, message)
    if 400 <= status < 500 and status != 429:
        return Refused(status, message)
    return Retryable(status, message)
