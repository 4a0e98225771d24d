"""One `ElasticJob`, driven: read what is there, decide (kube/reconcile.py), apply.

Where it sits: kube/operator.py runs one `JobRunner` per job, in a kopf daemon, each
round woken by a change to one of the job's pods or by the poll interval. A round reads
everything it decides from (the job object, its pods, the controller's `Status`) and
keeps nothing between rounds but clients and caches, so an operator restarted at any
moment carries on where the job stands.

Order matters for "nothing twice": the status, with the pod counter already advanced,
is written before the pods it counts are created, so a crash in between leaves a gap
in the numbering, never a reused name.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from elastiq import rpc
from elastiq.kube import openapi, resources
from elastiq.kube.job_spec import check_name, parse_spec
from elastiq.kube.job_status import ElasticJobStatus
from elastiq.kube.reconcile import (
    Actions,
    KubeEvent,
    invalid_spec,
    parse_status,
    pod_view,
    reconcile,
)
from elastiq.proto import elastiq_pb2 as pb
from elastiq.secret_files import new_token

if TYPE_CHECKING:  # the kubernetes client loads only in `elastiq operator`
    from elastiq.kube.api import KubeApi

log = logging.getLogger(__name__)

#: the operator's call to the controller's Status
STATUS_TIMEOUT_S = 5.0


@dataclass(kw_only=True, slots=True)
class OperatorConfig:
    """How the operator runs jobs."""

    image: str = "elastiq:0.1.0"
    """The elastiq image for controllers and agent sidecars (spec.elastiqImage wins)."""
    namespaces: list[str] = field(default_factory=list)
    """Namespaces to watch (empty: all of them)."""
    controller_host_format: str = "{service}.{namespace}.svc"
    """How agents and the operator reach a job's controller Service."""
    api_server: str = ""
    """The API server's URL (empty: in the cluster, else the kubeconfig)."""
    poll_interval_s: float = 2.0
    """Seconds between rounds of a job when none of its pods changed."""

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("--image is needed: the elastiq image controllers and agents run")
        try:
            self.controller_host_format.format(service="s", namespace="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"controller_host_format {self.controller_host_format!r} may use only "
                "{service} and {namespace}"
            ) from exc
        if not 0.1 <= self.poll_interval_s <= 300:
            raise ValueError(f"poll_interval_s={self.poll_interval_s} must be in 0.1..300")


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobRunner:
    def __init__(
        self,
        api: KubeApi,
        config: OperatorConfig,
        name: str,
        namespace: str,
        uid: str,
        emit: Callable[[dict[str, Any], KubeEvent], None],
    ) -> None:
        self.api, self.config = api, config
        self.name, self.namespace, self.uid = name, namespace, uid
        self._emit = emit
        self._base_ready = False
        self._controller_removed = False
        self._client: rpc.ControllerClient | None = None
        self._operator_token = ""

    async def round(self) -> Actions | None:
        """One reconciliation; the actions it applied (None if the job is gone)."""
        obj = await self.api.get_job(self.namespace, self.name)
        if obj is None:
            return None
        meta = obj.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        previous = parse_status(obj.get("status"))
        try:
            check_name(self.name)
            spec = parse_spec(obj.get("spec"))
        except ValueError as exc:
            actions = invalid_spec(
                previous, str(exc), metadata_generation=generation, now=now_rfc3339()
            )
            await self._apply(obj, None, actions, previous)
            return actions
        ref = resources.JobRef(
            name=self.name,
            namespace=self.namespace,
            uid=self.uid,
            spec=spec,
            image=spec.elastiq_image or self.config.image,
            controller_host=resources.controller_host(
                self.name, self.namespace, self.config.controller_host_format
            ),
        )
        if previous.phase not in ("Succeeded", "Failed") and not self._base_ready:
            await self._ensure_base(ref)
        pods = [
            view
            for raw in await self.api.list_pods(
                self.namespace, resources.worker_selector(self.name)
            )
            if (view := pod_view(raw, self.name)) is not None
        ]
        controller = await self._controller_status(ref) if self._base_ready else None
        actions = reconcile(
            ref, pods, previous, controller, metadata_generation=generation, now=now_rfc3339()
        )
        await self._apply(obj, ref, actions, previous)
        return actions

    async def _apply(
        self,
        obj: dict[str, Any],
        ref: resources.JobRef | None,
        actions: Actions,
        previous: ElasticJobStatus,
    ) -> None:
        if actions.status != previous:  # an unchanged status is not written again
            await self.api.patch_job_status(self.namespace, self.name, openapi.dump(actions.status))
        for event in actions.events:
            self._emit(obj, event)
        if ref is not None:
            for number in actions.create:
                if await self.api.create(resources.worker_pod(ref, number)):
                    log.info(
                        "job %s: created pod %s",
                        self.name,
                        resources.worker_pod_name(self.name, number),
                    )
            for name in actions.delete:
                await self.api.delete("Pod", self.namespace, name)
                log.info("job %s: deleted pod %s", self.name, name)
        if actions.remove_controller and not self._controller_removed:
            controller = f"{self.name}-controller"
            await self.api.delete("Deployment", self.namespace, controller)
            await self.api.delete("Service", self.namespace, controller)
            self._controller_removed = True
            await self.close()

    async def _ensure_base(self, ref: resources.JobRef) -> None:
        """The Secret, ConfigMap and controller; each created only if it is missing."""
        if ref.spec.token_secret is None:
            await self.api.create(resources.token_secret(ref, new_token(), new_token()))
        await self.api.create(resources.job_config_map(ref))
        await self.api.create(resources.controller_deployment(ref))
        await self.api.create(resources.controller_service(ref))
        self._base_ready = True

    async def _controller_status(self, ref: resources.JobRef) -> pb.StatusResponse | None:
        if not self._operator_token:
            token = await self.api.secret_value(
                self.namespace, ref.tokens_secret, ref.operator_token_key
            )
            if not token:
                log.warning(
                    "job %s: secret %s has no key %s yet",
                    self.name,
                    ref.tokens_secret,
                    ref.operator_token_key,
                )
                return None
            self._operator_token = token
        if self._client is None or self._client.address != ref.controller_address:
            await self.close()
            self._client = rpc.ControllerClient(ref.controller_address, timeout_s=STATUS_TIMEOUT_S)
        try:
            reply: pb.StatusResponse = await self._client.call(
                "Status", pb.StatusRequest(token=self._operator_token)
            )
            return reply
        except (rpc.RpcRetryable, rpc.RpcRejected) as exc:
            log.info("job %s: controller not answering yet (%s)", self.name, exc)
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
