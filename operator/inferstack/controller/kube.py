"""Thin Kubernetes I/O for the operator: the only module that calls the API.

Every call is idempotent: create tolerates "already exists", delete tolerates
"not found". The official client is synchronous, so calls run in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from inferstack import GROUP, PLURAL, VERSION, __version__
from inferstack.controller.metrics import API_WRITES, WRITES_FENCED
from inferstack.core import objects
from inferstack.core.status import Problem, one_line
from inferstack.core.trafficplan import PLAN_PLURAL

log = logging.getLogger(__name__)

# One field manager for every replica. The replicas are one controller: the
# new leader's server-side apply of a TrafficPlan must own what the old one's
# did (a manager per replica would leave the old one's entries behind, and
# plan_index would take every plan for one another writer touched).
FIELD_MANAGER = "inferstack-operator"
# What the API server's audit log shows for the operator's own client, so its
# requests can be told from everyone else's (bench/stacks_scale.py counts them).
# kopf's watches and Events come with "kopf/<version>" and the same comment.
USER_AGENT = f"inferstack-operator/{__version__}"


def user_agent(identity: str | None = None, product: str = USER_AGENT) -> str:
    """``product (identity)``: which replica sent a request, in the API server's audit log.

    The identity goes after the first "/": for a write that names no field
    manager the API server takes the user agent up to its first "/" as the
    manager, so every replica's is still ``inferstack-operator`` (or ``kopf``).
    """
    if not identity:
        return product
    clean = "".join(c for c in identity if c.isprintable() and c not in "()")
    return f"{product} ({clean})"


def new_client(identity: str | None = None) -> client.ApiClient:
    api = client.ApiClient()
    api.user_agent = user_agent(identity)
    return api


def api_problem(exc: ApiException, doing: str) -> Problem:
    """The API server's refusal as a stack's problem: its reason and its message, one line.

    The message is the server's own (``exceeded quota: ...``, ``failed to
    allocate a serviceIP: range is full``), never the client's exception repr
    with headers and a body dump.
    """
    reason, message = "", ""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict):
            reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
    except (TypeError, ValueError):
        pass
    reason = reason or (exc.reason or "").replace(" ", "") or f"HTTP{exc.status}"
    message = message or f"{exc.status} {exc.reason}"
    return Problem(reason, one_line(f"{doing}: {message}" if doing else message))


def load_config(kubeconfig: str | None = None, context: str | None = None, identity: str | None = None) -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, context=context)
    return new_client(identity)


class NotLeader(RuntimeError):
    """A write refused before it was sent: this replica does not hold the leader-election lease."""


class Kube:
    def __init__(self, api: client.ApiClient, fence: Callable[[], bool] | None = None) -> None:
        self.api = api
        # Checked before every write: with leader election, a replica whose lease
        # may have passed to another (controller/leader.py) sends nothing.
        self.fence = fence
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _write(self, fn, *args, **kwargs):
        if self.fence is not None and not self.fence():
            WRITES_FENCED.inc()
            raise NotLeader(f"not the leader: {fn.__name__} not sent")
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def read_configmap_key(self, namespace: str, name: str, key: str) -> str | None:
        try:
            cm = await self._call(self.core.read_namespaced_config_map, name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return (cm.data or {}).get(key)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """A notification webhook's URL or token, or a vector store's DSN (the index check).

        None when the Secret or key is missing. Never logged.
        """
        try:
            secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create if missing; True when this call created it."""
        ns = manifest["metadata"]["namespace"]
        kind = manifest["kind"]
        fn = {
            "Service": self.core.create_namespaced_service,
            "Deployment": self.apps.create_namespaced_deployment,
            "ControllerRevision": self.apps.create_namespaced_controller_revision,
            "Job": self.batch.create_namespaced_job,
        }[kind]
        try:
            API_WRITES.labels(ns, kind, "create").inc()
            await self._write(fn, ns, manifest)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}
        API_WRITES.labels(namespace, "Deployment", "scale").inc()
        try:
            await self._write(self.apps.patch_namespaced_deployment_scale, name, namespace, body)
        except ApiException as e:
            if e.status != 404:
                raise

    async def delete_revision(self, namespace: str, stack: str, revision: str) -> None:
        """The objects of one revision (they share its name); background propagation deletes its pods."""
        name = objects.revision_name(stack, revision)
        await self._delete_in_order(namespace, name, [
            self.apps.delete_namespaced_deployment,
            self.core.delete_namespaced_service,
            # last: while it exists, the revision counts as present and is retried
            self.apps.delete_namespaced_controller_revision,
        ])  # fmt: skip

    async def delete_embedder(self, namespace: str, name: str) -> None:
        """An embedder's Service and Deployment (core/embedder.py); background propagation deletes its pods."""
        await self._delete_in_order(namespace, name, [
            self.core.delete_namespaced_service,
            # last: while it exists, the embedder counts as present and is retried
            self.apps.delete_namespaced_deployment,
        ])  # fmt: skip

    async def _delete_in_order(self, namespace: str, name: str, deletes: list[Any]) -> None:
        """Objects of one name, in this order (the last one marks the whole as present); gone already is fine."""
        for fn in deletes:
            API_WRITES.labels(namespace, fn.__name__.removeprefix("delete_namespaced_"), "delete").inc()
            try:
                await self._write(fn, name, namespace, propagation_policy="Background")
            except ApiException as e:
                if e.status != 404:
                    raise

    async def delete_job(self, namespace: str, name: str) -> None:
        """A golden Job and its pod (background propagation); gone already is fine."""
        API_WRITES.labels(namespace, "Job", "delete").inc()
        try:
            await self._write(self.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    async def termination_messages(self, namespace: str, job: str) -> list[str]:
        """The termination messages of a Job's pods' containers (a golden Job's report)."""
        pods = await self._call(self.core.list_namespaced_pod, namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
        out = []
        for pod in pods.items:
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                terminated = cs.state.terminated if cs.state else None
                if terminated is not None and terminated.message:
                    out.append(terminated.message)
        return out

    async def write_plan(self, manifest: dict[str, Any]) -> None:
        """One write: server-side apply of the whole TrafficPlan (creates it on first use).

        Forced: the operator is the only writer a plan may have, so a field
        another manager touched is taken back rather than a conflict.
        """
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        API_WRITES.labels(ns, "TrafficPlan", "apply").inc()
        await self._write(
            self.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLAN_PLURAL, name, manifest,
            field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    async def replace_plan(self, manifest: dict[str, Any], resource_version: str) -> None:
        """One write that makes the whole TrafficPlan the operator's again: spec, labels and owner.

        For a plan someone else wrote to: server-side apply would leave the
        fields another manager set (a forged apiKeySecretRef, say), and the
        plan would never again equal the one wanted. A conflict (409) is
        retried by the next pass, with the object as it is then.
        """
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        API_WRITES.labels(ns, "TrafficPlan", "replace").inc()
        body = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": resource_version}}
        await self._write(
            self.custom.replace_namespaced_custom_object, GROUP, VERSION, ns, PLAN_PLURAL, name, body, field_manager=FIELD_MANAGER
        )

    async def delete_legacy_plan(self, namespace: str, name: str, uid: str) -> None:
        """Delete a plan ConfigMap of an older release; the uid precondition deletes exactly the one we saw."""
        API_WRITES.labels(namespace, "ConfigMap", "delete").inc()
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            await self._write(self.core.delete_namespaced_config_map, name, namespace, body=options)
        except ApiException as e:
            if e.status not in (404, 409):  # gone already, or replaced by another object of that name
                raise

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch .status; returns the object as the API server now has it."""
        API_WRITES.labels(namespace, "InferenceStack", "patch-status").inc()
        return await self._write(
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    async def apply_httproute(self, manifest: dict[str, Any]) -> bool:
        """Create or replace the stack's HTTPRoute unless it already carries this spec; True if written.

        The API server defaults fields inside an HTTPRoute, so comparing specs
        would always differ; a hash of what we wrote, in an annotation, does not.
        """
        from inferstack.core.gateway import GATEWAY_GROUP, GATEWAY_VERSION
        from inferstack.core.revision import digest

        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        want = digest(manifest["spec"])[:16]
        manifest["metadata"].setdefault("annotations", {})[f"{GROUP}/spec-hash"] = want
        args = (GATEWAY_GROUP, GATEWAY_VERSION, ns, "httproutes")
        try:
            current = await self._call(self.custom.get_namespaced_custom_object, *args, name)
        except ApiException as e:
            if e.status != 404:
                raise
            API_WRITES.labels(ns, "HTTPRoute", "create").inc()
            await self._write(self.custom.create_namespaced_custom_object, *args, manifest)
            return True
        if (current.get("metadata", {}).get("annotations") or {}).get(f"{GROUP}/spec-hash") == want:
            return False
        manifest["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        API_WRITES.labels(ns, "HTTPRoute", "replace").inc()
        await self._write(self.custom.replace_namespaced_custom_object, *args, name, manifest)
        return True
