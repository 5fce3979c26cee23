"""``kubectl istack``: inspect and steer InferenceStack rollouts.

kubectl runs this as a plugin (``kubectl istack status NAME``). kubectl does
not pass its own flags to plugins, so this reads KUBECONFIG and takes
``--kubeconfig``, ``--context`` and ``-n/--namespace`` itself. Commands are
one merge patch of two annotations on the stack; the operator runs each
(command, command-id) pair once and records it in ``status.rollout.lastCommand``.

The I/O is here; the text comes from :mod:`inferstack.cli.format`.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from inferstack import GROUP, PLURAL, VERSION
from inferstack.cli import format as fmt
from inferstack.core.apikeys import ALL_STACKS, KeySecretError, generate_key, key_secret
from inferstack.core.rollout import COMMAND_ID_ANNOTATION, Verb

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LABEL_STACK = f"{GROUP}/stack"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by=inferstack"

# Subcommand -> (verb, help). undo is separate: it takes --to.
SIMPLE_COMMANDS: dict[str, tuple[Verb, str]] = {
    "abort": (Verb.ABORT, "roll the candidate back now (traffic, bundle and cache namespace in one write)"),
    "retry": (Verb.RETRY, "roll out the rolled-back revision again"),
    "pause": (Verb.PAUSE, "hold the rollout at its current step (failing gates still roll back)"),
    "resume": (Verb.RESUME, "continue a paused rollout"),
}


class Client:
    """The few API calls the plugin makes, over the official client."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config  # slow to import: only when a cluster is needed

        self.namespace = "default"
        try:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            self.namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        except config.ConfigException as e:
            if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise fmt.CliError(f"cannot load the kubeconfig: {e}") from e
            config.load_incluster_config()
            api = client.ApiClient()
            if SERVICE_ACCOUNT_NAMESPACE.exists():
                self.namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def _plain(self, obj: Any) -> Any:
        return self.api.sanitize_for_serialization(obj)

    def get_stack(self, namespace: str, name: str) -> dict[str, Any]:
        return cast(
            dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )

    def list_stacks(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        result = cast(dict[str, Any], result)
        return list(result.get("items") or [])

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        selector = f"involvedObject.kind=InferenceStack,involvedObject.name={name}"
        try:
            items = self.core.list_namespaced_event(namespace, field_selector=selector).items or []
        except ApiException as e:
            if e.status != 403:
                raise
            # Events are a nice-to-have in `status`; no right to read them is no reason to fail.
            print("warning: not allowed to list events; showing the stack without them", file=sys.stderr)
            return []
        return [self._plain(e) for e in items]

    def revisions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"{LABEL_STACK}={name},{LABEL_MANAGED_BY}"
        items = self.apps.list_namespaced_controller_revision(namespace, label_selector=selector).items or []
        return [self._plain(r) for r in items]

    def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.core.create_namespaced_secret(namespace, body)  # type: ignore[arg-type]  # the client sends dicts as they are

    def patch_stack(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        result = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )
        return cast(dict[str, Any], result)


# ------------------------------------------------------------------ commands


def cmd_status(c: Client, args: argparse.Namespace, now: datetime) -> str:
    stack = c.get_stack(args.namespace, args.name)
    return fmt.format_status(stack, c.events(args.namespace, args.name), now)


def cmd_list(c: Client, args: argparse.Namespace, now: datetime) -> str:
    namespace = None if args.all_namespaces else args.namespace
    return fmt.format_list(c.list_stacks(namespace), now, all_namespaces=args.all_namespaces)


def cmd_history(c: Client, args: argparse.Namespace, now: datetime) -> str:
    stack = c.get_stack(args.namespace, args.name)
    return fmt.format_history(stack, c.revisions(args.namespace, args.name), now)


def send(c: Client, args: argparse.Namespace, verb: Verb, now: datetime, argument: str = "") -> str:
    stack = c.get_stack(args.namespace, args.name)
    if warning := fmt.command_warning(verb, stack.get("status") or {}):
        print(f"warning: {warning}", file=sys.stderr)
    patch = fmt.command_patch(verb, now, argument)
    c.patch_stack(args.namespace, args.name, patch)
    annotations = patch["metadata"]["annotations"]
    value = fmt.command_value(verb, argument)
    return (
        f"inferencestack {args.namespace}/{args.name}: {value} sent (command-id {annotations[COMMAND_ID_ANNOTATION]}).\n"
        f"The operator runs it on its next pass; `kubectl istack status {args.name}` shows the outcome.\n"
    )


def cmd_promote(c: Client, args: argparse.Namespace, now: datetime) -> str:
    return send(c, args, Verb.PROMOTE_FULL if args.full else Verb.PROMOTE, now)


def cmd_undo(c: Client, args: argparse.Namespace, now: datetime) -> str:
    target = fmt.resolve_revision(args.to, c.revisions(args.namespace, args.name))
    return send(c, args, Verb.UNDO, now, target)


def cmd_key_create(c: Client, args: argparse.Namespace, now: datetime) -> str:
    """A new API key: its Secret (hash, tenant, stacks) is created, the key printed once."""
    key = generate_key()
    try:
        secret = key_secret(args.name, args.namespace, key, args.tenant, args.stacks, record_content=not args.no_content_recording)
    except KeySecretError as e:
        raise fmt.CliError(str(e)) from None
    c.create_secret(args.namespace, secret)
    stacks = "every stack" if args.stacks.strip() == ALL_STACKS else f"the stacks {args.stacks.strip()}"
    print(
        f"secret {args.namespace}/{args.name} created: tenant {args.tenant}, {stacks} of namespace {args.namespace}.\n"
        "The key is printed once, below; only its SHA-256 is stored. Delete the Secret to revoke it.",
        file=sys.stderr,
    )
    return key + "\n"


def connection_flags(default: Any) -> argparse.ArgumentParser:
    """The flags kubectl users expect; accepted before or after the subcommand."""
    flags = argparse.ArgumentParser(add_help=False, argument_default=default)
    flags.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    flags.add_argument("--context", help="kubeconfig context (default: the current context)")
    flags.add_argument("-n", "--namespace", help="namespace (default: the context's namespace, else default)")
    return flags


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl istack",
        description="Inspect and steer InferenceStack rollouts.",
        parents=[connection_flags(None)],
    )
    # SUPPRESS: a flag not given after the subcommand keeps the value given before it.
    common = connection_flags(argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, fn, with_name: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        if with_name:
            sp.add_argument("name", metavar="NAME", help="the InferenceStack")
        sp.set_defaults(fn=fn)
        return sp

    add("status", "phase, revisions, step, weights, gate verdicts, conditions and recent events", cmd_status)
    lst = add(
        "list", "stacks with phase, revisions, step, weights and a gate summary", cmd_list, with_name=False
    )
    lst.add_argument("-A", "--all-namespaces", action="store_true", help="list stacks in every namespace")
    add("history", "the stack's revisions (ControllerRevisions), newest first", cmd_history)
    promote = add("promote", "end the current step now (one increment of a ramp)", cmd_promote)
    promote.add_argument(
        "--full", action="store_true", help="make the candidate stable at once (promote-full)"
    )
    for name, (verb, help_) in SIMPLE_COMMANDS.items():
        add(name, help_, lambda c, a, now, verb=verb: send(c, a, verb, now))
    key = sub.add_parser("key", help="client API keys of the router", description="Client API keys of the router (docs/router.md).")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    create = key_sub.add_parser(
        "create", parents=[common], help="make a key for the stacks of a namespace: its Secret holds only its hash",
        description="Make a key, create its Secret (label inferstack.dev/api-key) with the key's SHA-256, tenant and "
        "stacks, and print the key once on stdout.",
    )  # fmt: skip
    create.add_argument("name", metavar="NAME", help="the Secret's name")
    create.add_argument("--tenant", required=True, help="the tenant the key stands for (a DNS label); caches are per tenant")
    create.add_argument("--stacks", default=ALL_STACKS, help="comma-separated stacks of the namespace it may call (default: * = all)")
    create.add_argument("--no-content-recording", action="store_true",
                        help="the tenant opts out: its messages and answers are never recorded in traces or audit lines")
    create.set_defaults(fn=cmd_key_create)
    undo = add("undo", "make an earlier revision the candidate (rolled out through the steps)", cmd_undo)
    undo.add_argument(
        "--to", required=True, metavar="REV", help="revision hash, unique hash prefix or revision number"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from kubernetes.client.exceptions import ApiException

        client = Client(args.kubeconfig, args.context)
        if args.namespace is None:
            args.namespace = client.namespace
        if not hasattr(args, "all_namespaces"):
            args.all_namespaces = False
        sys.stdout.write(args.fn(client, args, datetime.now(UTC)))
        return 0
    except fmt.CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ApiException as e:
        print(f"error: {api_error(e, args)}", file=sys.stderr)
        return 1


def api_error(e: Any, args: argparse.Namespace) -> str:
    """One line for an API error, with the likely fix for the common ones."""
    name = getattr(args, "name", None)
    if getattr(args, "key_command", None):
        if e.status == 409:
            return f"secret {name!r} already exists in namespace {args.namespace!r}: choose another NAME (no key was made)"
        if e.status == 403:
            return f"forbidden: {e.reason}; making a key needs `create` on secrets in namespace {args.namespace!r}"
        if e.status == 404:
            return f"namespace {args.namespace!r} not found"
    if e.status == 404 and name:
        return f"inferencestack {name!r} not found in namespace {args.namespace!r} (try -n NAMESPACE or `kubectl istack list -A`)"
    if e.status == 404:
        return "the InferenceStack API is not installed in this cluster (kubectl apply -f crds/)"
    if e.status == 403:
        return f"forbidden: {e.reason}; your account needs access to inferencestacks.{GROUP} (and events, controllerrevisions to read)"
    return f"API server answered {e.status} {e.reason}"


if __name__ == "__main__":
    sys.exit(main())
