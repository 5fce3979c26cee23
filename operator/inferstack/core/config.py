"""Operator configuration: what a platform team sets once for all stacks.

Read from a YAML file (``--config``, the chart mounts it) so pools can be
changed without rebuilding the operator. Pure data, no I/O here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from inferstack.api.v1alpha1 import NotificationEvent


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


GPU_TOLERATION: dict[str, str] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class PoolConfig(_Model):
    """Where a pool's pods go and how they are ranked when GPUs run short."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class_name: str | None = None


def default_pools() -> dict[str, PoolConfig]:
    return {"interactive": PoolConfig(), "batch": PoolConfig()}


class GoldenJobConfig(_Model):
    """The Jobs that replay golden sets (core/golden.py): where they run and with what image.

    The image is the operator's own (it carries ``python -m inferstack.golden``);
    the chart fills it in from ``operator.image``.
    """

    image: str = "inferstack/operator:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # Golden Jobs need no GPU: keep them on CPU nodes.
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class_name: str | None = None
    # None (the default): a Job stays while its candidate rolls out (a held
    # step re-reads it; a Job gone would be run again) and the operator
    # deletes it when the rollout ends. A TTL removes finished Jobs sooner.
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    # One model request of a case; a slower answer counts as an error, not a failure.
    request_timeout_seconds: float = Field(120.0, gt=0)
    resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    )


class SecretRef(_Model):
    """A key of a Secret; cluster-wide webhooks name its namespace."""

    namespace: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    key: str = Field(..., min_length=1)


class WebhookConfig(_Model):
    """A cluster-wide webhook: every stack's notifications go there too (core/notifications.py)."""

    name: str = Field(..., min_length=1, max_length=63)
    url: str | None = None
    url_secret_ref: SecretRef | None = None
    token_secret_ref: SecretRef | None = None
    events: list[NotificationEvent] = Field(default_factory=list)  # empty: all

    @model_validator(mode="after")
    def _one_url(self) -> WebhookConfig:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError(f"notifications.webhooks {self.name}: set exactly one of url and urlSecretRef")
        return self


class NotificationsConfig(_Model):
    """Delivery of notifications: never on the reconcile path (controller/notify.py)."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    # Deliveries waiting; past it a new one is dropped and counted, never waited for.
    queue_size: int = Field(1000, ge=1)
    max_attempts: int = Field(6, ge=1)
    # Backoff between attempts doubles from the first to the max.
    backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    timeout_seconds: float = Field(5.0, gt=0)


class LeaderElectionConfig(_Model):
    """Several replicas, one leader on a coordination.k8s.io Lease (controller/leader.py, core/lease.py).

    Off by default, so a single ``inferstack-operator`` run by hand needs no
    Lease; the chart turns it on and runs two replicas.
    """

    enabled: bool = False
    lease_name: str = Field("inferstack-operator", min_length=1, max_length=253)
    # None: the operator's own namespace (POD_NAMESPACE, else the ServiceAccount's, else "default").
    lease_namespace: str | None = None
    # A standby takes the lease once it has not changed for this long.
    lease_duration_seconds: float = Field(15.0, gt=0)
    # The leader stops writing once its last renewal is this old. Shorter than
    # the lease duration: the difference is the margin between the old
    # leader's last write and the new leader's first.
    renew_deadline_seconds: float = Field(10.0, gt=0)
    # Between renewals (leader) and between tries (standby): the leader's
    # writes per minute are 60 / this.
    retry_period_seconds: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionConfig:
        if not self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError("leaderElection: retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds is required")
        return self


class OperatorConfig(_Model):
    pools: dict[str, PoolConfig] = Field(default_factory=default_pools)
    # How the router reaches a revision. Inside a cluster this is the
    # revision's Service; tests on kwok (no kube-proxy) point it at stand-ins.
    backend_url_template: str = "http://{service}.{namespace}.svc:8000"
    # How the router reaches an embedding model the operator deploys
    # (core/embedder.py): {service}, {namespace}, {stack}, {embedder}.
    embedder_url_template: str = "http://{service}.{namespace}.svc:8000"
    shm_size: str = "8Gi"
    model_port: int = 8000
    # Model loads take minutes: the startup probe allows this long before
    # liveness starts counting (also capped by the stack's progressDeadline).
    startup_probe_period_seconds: int = 10
    service_account_name: str | None = None
    # Scan interval for rollouts and readiness, in seconds.
    resync_seconds: float = 5.0
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_timeout_seconds: float = 5.0
    # The shortest analysis window worth querying: a few scrape intervals of
    # the router's metrics (rate() over fewer returns nothing). A step is
    # analysed only once it is this old, on its own data alone. 60 s suits
    # 15 s scrapes; the local test rig scrapes every second and uses 4 s.
    min_analysis_window_seconds: float = Field(60.0, gt=0)
    golden_job: GoldenJobConfig = Field(default_factory=GoldenJobConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    leader_election: LeaderElectionConfig = Field(default_factory=LeaderElectionConfig)

    @property
    def min_analysis_window(self) -> timedelta:
        return timedelta(seconds=self.min_analysis_window_seconds)
