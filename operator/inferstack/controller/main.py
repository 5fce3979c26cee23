"""``inferstack-operator``: run the operator (in a cluster or against a kubeconfig)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from pathlib import Path

import kopf
import prometheus_client
import yaml

from inferstack import GROUP
from inferstack.controller import handlers, kopf_fixes
from inferstack.controller.kube import Kube, load_config, new_client, user_agent
from inferstack.controller.leader import Elector, KubeLeases, default_identity, default_namespace
from inferstack.controller.notify import Notifier
from inferstack.core.config import OperatorConfig


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # Everything kopf persists lives under our own API group.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    # Events are posted for decisions only (kopf.event), not for every log line.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


_election: list[asyncio.Task] = []
_watchdogs: list[asyncio.Task] = []


@kopf.on.startup()
async def start_watchdog(**_) -> None:
    _watchdogs.append(asyncio.create_task(kopf_fixes.report_held_readiness(), name="kopf readiness watchdog"))


@kopf.on.cleanup()
async def stop_watchdog(**_) -> None:
    for task in _watchdogs:
        task.cancel()
    await asyncio.gather(*_watchdogs, return_exceptions=True)


@kopf.on.startup()
async def start_election(**_) -> None:
    # Started with kopf's watches: the loops start once both the lease is
    # ours and the watch has listed the stacks (whichever comes last).
    if (elector := handlers.Runtime.elector) is not None:
        _election.append(asyncio.create_task(elector.run(), name="leader election"))


@kopf.on.cleanup()
async def end_election(**_) -> None:
    """On SIGTERM: stop the loops, then give the lease up so a standby takes over at once."""
    if (elector := handlers.Runtime.elector) is None:
        return
    for task in _election:
        task.cancel()
    await asyncio.gather(*_election, return_exceptions=True)
    await handlers.stop_all_loops()
    await elector.release()


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentifiedConnection(kopf.ConnectionInfo):
    """kopf's credentials, and a User-Agent naming this replica (kopf adds its own only when none is set)."""

    user_agent: str = ""

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), **({"User-Agent": self.user_agent} if self.user_agent else {})}


class Identity:
    """This process's name: in the Lease, and in the user agent of all its requests."""

    name: str | None = None


@kopf.on.login()
def login(**kwargs):
    # Reuse the kubernetes client configuration loaded in main() (kubeconfig
    # context or in-cluster service account). kopf's watches and Events name
    # the replica too, so the API server's audit log tells which replica sent
    # what: "kopf/<version> (<identity>)".
    info = kopf.login_via_client(**kwargs)
    if info is None or not Identity.name:
        return info
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    return IdentifiedConnection(**fields, user_agent=user_agent(Identity.name, f"kopf/{kopf.__version__}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inferstack-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="path to a kubeconfig (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--config", type=Path, help="operator configuration YAML (pools, backend URL template, ...)")
    parser.add_argument("--namespace", action="append", help="watch only these namespaces (default: all)")
    parser.add_argument("--resync-seconds", type=float, help="override resyncSeconds from the configuration")
    parser.add_argument("--metrics-port", type=int, default=8080, help="serve Prometheus metrics here (0 = off)")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument(
        "--identity",
        help="this replica's name in the leader-election Lease and in the user agent of its API requests (default: $POD_NAME or the host, and a random suffix)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = OperatorConfig.model_validate(yaml.safe_load(args.config.read_text()) or {}) if args.config else OperatorConfig()
    if args.resync_seconds:
        config = config.model_copy(update={"resync_seconds": args.resync_seconds})
    handlers.Runtime.config = config
    identity = Identity.name = args.identity or default_identity()
    api = load_config(args.kubeconfig, args.context, identity)
    if (election := config.leader_election).enabled:
        leases = KubeLeases(
            # Its own client (and connection pool): renewals never wait for a free connection.
            new_client(identity), election.lease_namespace or default_namespace(), election.lease_name,
            timeout=election.renew_deadline_seconds / 2,
        )  # fmt: skip
        handlers.Runtime.elector = Elector(
            leases, identity, election,
            on_started=handlers.start_all_loops, on_stopped=handlers.stop_all_loops,
        )  # fmt: skip
    handlers.Runtime.kube = Kube(api, fence=handlers.may_write)
    handlers.Runtime.notifier = Notifier(config.notifications, handlers.Runtime.kube)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.metrics_host)
    kopf_fixes.install()  # before kopf starts its orchestration
    kopf_fixes.namespace_gone.append(handlers.forget_namespace)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or [],
        # No kopf peering: its heartbeats are written by every replica, and it
        # freezes rather than elects. Several replicas elect a leader on a
        # Lease (leaderElection in the configuration, controller/leader.py).
        standalone=True,
    )


if __name__ == "__main__":
    main()
