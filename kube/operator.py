"""`elastiq operator`: the kopf wiring that runs every `ElasticJob`.

Where it sits: the only module that imports kopf. Per job, a kopf daemon runs a
`JobRunner` (kube/job_runner.py) round after round: at once when one of the job's pods
changes (a pod watch wakes it), else every `poll_interval_s`. Deleting a job stops its
daemon; its objects go with it through their ownerReferences. kopf keeps its own
bookkeeping in `elastiq.dev/` annotations, so the status holds only what the CRD's
schema describes. One operator replica (`standalone`: no peering objects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import kopf

from elastiq.kube.api import ApiEndpoint, KubeApi, Refused, Retryable
from elastiq.kube.job_runner import JobRunner, OperatorConfig
from elastiq.kube.job_spec import GROUP, PLURAL, VERSION
from elastiq.kube.reconcile import KubeEvent
from elastiq.kube.resources import LABEL_JOB, LABEL_ROLE, ROLE_WORKER

log = logging.getLogger(__name__)


def build_registry(config: OperatorConfig, api: KubeApi) -> kopf.OperatorRegistry:
    """The operator's handlers, bound to `config` and `api` (no global registry)."""
    registry = kopf.OperatorRegistry()
    wakeups: dict[tuple[str, str], asyncio.Event] = {}

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{GROUP}/operator"
        settings.posting.level = logging.INFO
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if config.api_server:
            return kopf.ConnectionInfo(server=config.api_server)
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=10.0)
    async def run_job(
        stopped: kopf.DaemonStopped, name: str, namespace: str, uid: str, **_: Any
    ) -> None:
        def emit(obj: dict[str, Any], event: KubeEvent) -> None:
            kopf.event(obj, type=event.type, reason=event.reason, message=event.message)

        runner = JobRunner(api, config, name, namespace, uid, emit)
        wake = wakeups.setdefault((namespace, name), asyncio.Event())
        log.info("job %s/%s: running", namespace, name)
        try:
            while not stopped:
                try:
                    if await runner.round() is None:
                        return
                except Retryable as exc:
                    log.warning("job %s/%s: %s; retrying", namespace, name, exc)
                except Refused as exc:
                    log.error("job %s/%s: the API server refused: %s", namespace, name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), config.poll_interval_s)
                wake.clear()
        finally:
            wakeups.pop((namespace, name), None)
            await runner.close()

    @kopf.on.event("v1", "pods", labels={LABEL_ROLE: ROLE_WORKER}, registry=registry)
    def pod_changed(labels: dict[str, str], namespace: str, **_: Any) -> None:
        wake = wakeups.get((namespace, labels.get(LABEL_JOB, "")))
        if wake is not None:
            wake.set()

    return registry


def run(
    config: OperatorConfig,
    *,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    api = KubeApi(ApiEndpoint(server=config.api_server))
    try:
        asyncio.run(
            kopf.operator(
                registry=build_registry(config, api),
                clusterwide=not config.namespaces,
                namespaces=config.namespaces,
                standalone=True,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        )
    finally:
        api.close()
