"""The Helm chart, checked without a cluster.

Always: Chart.yaml and values.yaml parse, every value is documented, the
operator config in values is one the operator accepts, templates are
well-formed, the chart's CRD is the generated one, and the RBAC rules grant
every API call the operator and the router make (found by scanning their
source, so a new call without a rule fails here).
With a ``helm`` binary (on PATH, or $INFERSTACK_HELM): ``helm lint`` and
``helm template`` with several value sets, and the same checks on the output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferstack import GROUP, PLURAL
from inferstack.core.config import OperatorConfig
from inferstack.core.trafficplan import PLAN_PLURAL

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "inferstack"
TEMPLATES = CHART / "templates"
OPERATOR_SRC = ROOT / "operator" / "inferstack"

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)

# API group of each resource the Python client names in snake case. A call on
# a resource missing here fails the test: add it, and a rule to the chart.
GROUPS = {
    "config_map": "",
    "service": "",
    "secret": "",
    "event": "",
    "namespace": "",
    "pod": "",
    "deployment": "apps",
    "controller_revision": "apps",
    "job": "batch",
    "lease": "coordination.k8s.io",
}
VERBS = {
    "create": "create",
    "read": "get",
    "get": "get",
    "patch": "patch",
    "delete": "delete",
    "replace": "update",
    "list": "list",
}
CLIENT_CALL = re.compile(
    r"\b(?:api|core|apps|batch|coordination)\.(create|read|patch|delete|replace|list)_(?:namespaced_)?([a-z_]+?)(?:_for_all_namespaces)?\b"
)
CUSTOM_CALL = re.compile(
    r"\.(get|create|replace|patch|list|delete)_(?:namespaced|cluster)_custom_object(_status)?\b"
)


# -------------------------------------------------------------- chart files


def test_chart_yaml():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "inferstack"
    assert chart["appVersion"] == "0.1.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject, "appVersion must follow the package version"


CRD_FILES = ["inferstack.dev_inferencestacks.yaml", "inferstack.dev_trafficplans.yaml"]


@pytest.mark.parametrize("name", CRD_FILES)
def test_crd_copy_is_the_generated_crd(name):
    """Helm installs crds/ of the chart; it must be byte-identical to crds/ (make manifests copies it)."""
    generated = ROOT / "crds" / name
    copy = CHART / "crds" / generated.name
    assert copy.exists(), f"missing {copy.relative_to(ROOT)}: copy {generated.relative_to(ROOT)} there"
    assert copy.read_bytes() == generated.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {generated.relative_to(ROOT)}: run make manifests"
    )


def test_the_chart_carries_every_crd_and_nothing_else():
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == CRD_FILES
    assert sorted(p.name for p in (ROOT / "crds").iterdir()) == CRD_FILES


def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def undocumented_keys(text: str) -> list[str]:
    """Keys of values.yaml without a comment line right above them.

    A key needs no comment of its own when it is a section header (its value
    is a block of documented keys) or when it sits inside a value that is
    documented as a whole (e.g. ``resources``, a security context).
    """
    lines = text.splitlines()
    missing: list[str] = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    key_line = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")
    for i, line in enumerate(lines):
        m = key_line.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
        commented = previous.strip().startswith("#")
        if not commented and not any(documented for _, documented in stack):
            following = next((n for n in lines[i + 1 :] if n.strip() and not n.strip().startswith("#")), "")
            follow_indent = len(following) - len(following.lstrip())
            is_section = not line[m.end() :].strip() and follow_indent > indent and key_line.match(following)
            if not is_section:
                missing.append(f"line {i + 1}: {line.strip()}")
        stack.append((indent, commented))
    return missing


def test_every_value_has_a_comment():
    assert undocumented_keys((CHART / "values.yaml").read_text()) == []


def test_undocumented_value_is_caught():
    text = "router:\n  # -- documented\n  replicas: 2\n  port: 8080\n"
    assert undocumented_keys(text) == ["line 4: port: 8080"]


def test_operator_config_in_values_is_accepted_by_the_operator():
    config = OperatorConfig.model_validate(values()["operator"]["config"])  # extra="forbid": typos fail
    assert set(config.pools) >= {"interactive", "batch"}  # the pools spec.model.pool may name


# router.limits value -> (the router's flag, its attribute in parse_args)
ROUTER_LIMITS = {
    "cacheMaxBytes": ("--cache-max-bytes", "cache_max_bytes"),
    "cacheMaxEntryBytes": ("--cache-max-entry-bytes", "cache_max_entry_bytes"),
    "maxConcurrentStreams": ("--max-concurrent-streams", "max_concurrent_streams"),
    "streamWriteTimeoutSeconds": ("--stream-write-timeout", "stream_write_timeout"),
    "maxRequestBytes": ("--max-request-bytes", "max_request_bytes"),
    "requestReadTimeoutSeconds": ("--request-read-timeout", "request_read_timeout"),
}


def test_router_limits_in_values_are_the_routers_defaults():
    """The chart states the router's limits; its defaults must be the router's own, so installing the chart
    changes nothing, and every value must be one the template renders."""
    from inferstack.router.main import parse_args

    limits = values()["router"]["limits"]
    assert sorted(limits) == sorted(ROUTER_LIMITS)
    defaults = parse_args([])
    for name, (flag, attr) in ROUTER_LIMITS.items():
        assert limits[name] == getattr(defaults, attr), name
        assert f"- {flag}={{{{" in (TEMPLATES / "router-deployment.yaml").read_text(), flag


def test_security_context_is_hardened():
    v = values()
    c, p = v["containerSecurityContext"], v["podSecurityContext"]
    assert c["runAsNonRoot"] and c["readOnlyRootFilesystem"] and not c["allowPrivilegeEscalation"]
    assert c["capabilities"]["drop"] == ["ALL"] and c["seccompProfile"]["type"] == "RuntimeDefault"
    assert p["runAsNonRoot"] and p["runAsUser"] == 65532 and p["seccompProfile"]["type"] == "RuntimeDefault"
    for name in ("operator-deployment.yaml", "router-deployment.yaml"):
        text = (TEMPLATES / name).read_text()
        assert ".Values.containerSecurityContext" in text and ".Values.podSecurityContext" in text, name
        assert "resources:" in text and "livenessProbe:" in text and "readinessProbe:" in text, name


def test_service_monitors_are_off_by_default():
    assert values()["metrics"]["serviceMonitor"]["enabled"] is False


# ---------------------------------------------------------------- templates


def template_errors(text: str) -> list[str]:
    """Unbalanced ``{{ }}`` and block actions (if/range/with/define ... end)."""
    errors = []
    depth = 0
    blocks = 0
    for m in re.finditer(r"\{\{|\}\}", text):
        depth += 1 if m.group() == "{{" else -1
        if depth not in (0, 1):
            errors.append(f"unbalanced braces at offset {m.start()}")
            depth = max(0, min(depth, 1))
    if depth:
        errors.append("an action is not closed")
    for action in re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", text, flags=re.S):
        word = action.split()[0] if action.split() else ""
        if word in ("if", "range", "with", "define", "block"):
            blocks += 1
        elif word == "end":
            blocks -= 1
            if blocks < 0:
                errors.append("end without a block")
    if blocks > 0:
        errors.append(f"{blocks} block(s) without end")
    return errors


@pytest.mark.parametrize("path", sorted(p.name for p in TEMPLATES.iterdir()))
def test_template_is_well_formed(path):
    assert template_errors((TEMPLATES / path).read_text()) == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a: {{ .x }", "not closed"),
        ("{{ if .x }}a", "without end"),
        ("{{ end }}", "end without"),
        ("{{ {{ }}", "unbalanced"),
    ],
)
def test_malformed_template_is_caught(text, error):
    assert any(error in e for e in template_errors(text))


def test_operator_runs_two_replicas_with_leader_election_by_default():
    operator = values()["operator"]
    assert operator["replicas"] == 2 and operator["config"]["leaderElection"]["enabled"] is True
    assert operator["podDisruptionBudget"] == {"enabled": True, "minAvailable": 1}
    text = (TEMPLATES / "operator-deployment.yaml").read_text()
    # More than one replica without an election would reconcile every stack twice: refused at render time.
    assert "operator.replicas > 1 needs operator.config.leaderElection.enabled" in text
    assert re.search(r"\{\{- else \}\}\n(\s+#.*\n)+\s+type: Recreate", text), "without an election, Recreate"


def skeleton(text: str) -> list[dict[str, Any]]:
    """A template's YAML with template actions blanked out: lines that are only an action go,
    inline actions become ``x``. Conditional parts are kept, so this is what the template can produce."""
    kept = [line for line in text.splitlines() if not re.fullmatch(r"\s*\{\{.*\}\}\s*", line)]
    blanked = re.sub(r"\{\{.*?\}\}", "x", "\n".join(kept))
    return [d for d in yaml.safe_load_all(blanked) if d]


# --------------------------------------------------------------------- RBAC


def _resource(snake: str, source: str) -> tuple[str, str]:
    sub = ""
    for suffix in ("_scale", "_status"):
        if snake.endswith(suffix):
            snake, sub = snake.removesuffix(suffix), "/" + suffix[1:]
    if snake not in GROUPS:
        pytest.fail(
            f"{source} calls the API on {snake!r}: add it to GROUPS in this test and a rule to the chart"
        )
    return GROUPS[snake], snake.replace("_", "") + "s" + sub


def client_calls(path: Path) -> set[Permission]:
    """Permissions the official client calls in one module need, custom objects included."""
    text = path.read_text()
    needed: set[Permission] = set()
    for verb, snake in CLIENT_CALL.findall(text):
        if snake.startswith("custom_object") or snake == "kube_config":
            continue
        group, resource = _resource(snake, path.name)
        needed.add((group, resource, VERBS[verb]))
        if verb == "list" and re.search(r"watch\.Watch\(\)", text):
            needed.add((group, resource, "watch"))
    # Custom objects: the resource is named in the same function (PLAN_PLURAL,
    # PLURAL or a literal plural); functions and methods alike.
    for body in re.split(r"\n(?:    )?(?:async )?def ", text):
        for verb, status in CUSTOM_CALL.findall(body):
            if "PLAN_PLURAL" in body:
                group, resource = GROUP, PLAN_PLURAL
            elif re.search(r"\bPLURAL\b", body):
                group, resource = GROUP, PLURAL
            elif '"httproutes"' in body:
                group, resource = "gateway.networking.k8s.io", "httproutes"
            else:
                pytest.fail(f"{path.name}: a custom object call on a resource this test cannot name")
            needed.add((group, resource + ("/status" if status else ""), VERBS[verb]))
            if verb == "list" and re.search(r"watch\.Watch\(\)", text):
                needed.add((group, resource, "watch"))
    return needed


def kopf_watches(path: Path) -> set[Permission]:
    """kopf indexes and event handlers list and watch their resource; kopf.event posts Events."""
    text = path.read_text()
    needed: set[Permission] = set()
    for group, resource in re.findall(
        r"@kopf\.(?:index|on\.event)\(\s*\"([^\"]*)\",\s*\"v1\",\s*\"(\w+)\"", text
    ):
        needed |= {(group, resource, "list"), (group, resource, "watch")}
    if re.search(r"@kopf\.on\.event\(GROUP, VERSION, PLURAL\)", text):
        needed |= {(GROUP, PLURAL, "list"), (GROUP, PLURAL, "watch")}
    if re.search(r"@kopf\.(?:index|on\.event)\(GROUP, VERSION, PLAN_PLURAL\b", text):
        needed |= {(GROUP, PLAN_PLURAL, "list"), (GROUP, PLAN_PLURAL, "watch")}
    if "kopf.event(" in text:
        needed.add(("", "events", "create"))
    return needed


def operator_needs() -> set[Permission]:
    controller = OPERATOR_SRC / "controller"
    return client_calls(controller / "kube.py") | kopf_watches(controller / "handlers.py")


def leader_election_needs() -> set[Permission]:
    """The Lease, in one namespace: granted by a Role, not the ClusterRole."""
    return client_calls(OPERATOR_SRC / "controller" / "leader.py")


def router_needs() -> set[Permission]:
    router = OPERATOR_SRC / "router"
    return client_calls(router / "kubesource.py") | client_calls(router / "keysource.py")


def granted(documents: list[dict[str, Any]], kind: str) -> set[Permission]:
    out: set[Permission] = set()
    for doc in documents:
        if doc.get("kind") == kind:
            for rule in doc.get("rules") or []:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        out |= {(g, r, v) for v in rule["verbs"]}
    return out


def test_scans_find_the_calls_we_know_of():
    """Guards the scanners: they must see at least these, or the RBAC checks below prove nothing."""
    assert {
        (GROUP, PLURAL, "watch"),
        (GROUP, f"{PLURAL}/status", "patch"),
        ("apps", "deployments", "create"),
        ("apps", "deployments/scale", "patch"),
        ("apps", "controllerrevisions", "create"),
        (GROUP, "trafficplans", "patch"),
        (GROUP, "trafficplans", "watch"),
        ("", "configmaps", "get"),
        ("", "configmaps", "delete"),
        ("", "configmaps", "watch"),
        ("", "services", "delete"),
        ("", "events", "create"),
        ("gateway.networking.k8s.io", "httproutes", "update"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "watch"),
        ("", "pods", "list"),
    } <= operator_needs()
    assert {
        (GROUP, "trafficplans", "list"),
        (GROUP, "trafficplans", "watch"),
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        ("", "secrets", "get"),
        ("", "configmaps", "list"),  # --count-legacy-plans only
    } <= router_needs()


def test_operator_clusterrole_grants_every_call():
    rules = granted(skeleton((TEMPLATES / "operator-rbac.yaml").read_text()), "ClusterRole")
    assert sorted(operator_needs() - rules) == []


def test_operator_role_grants_the_lease_and_nothing_else():
    assert leader_election_needs() == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    docs = skeleton((TEMPLATES / "operator-rbac.yaml").read_text())
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    assert set(roles) == {"x-operator-leader-election", "x-operator-store-secrets"}
    assert granted([roles["x-operator-leader-election"]], "Role") == leader_election_needs()
    assert not any(r == "leases" for _, r, _ in granted(docs, "ClusterRole")), "leases in one namespace only"
    # The store Secrets' Role reads Secrets and nothing else, and only the ones it names.
    assert granted([roles["x-operator-store-secrets"]], "Role") == {("", "secrets", "get")}
    assert all(rule.get("resourceNames") for rule in roles["x-operator-store-secrets"]["rules"])


def test_operator_clusterrole_covers_the_brief_and_no_secrets():
    rules = granted(skeleton((TEMPLATES / "operator-rbac.yaml").read_text()), "ClusterRole")
    for verb in ("get", "list", "watch", "patch"):
        assert (GROUP, PLURAL, verb) in rules
    assert {
        ("", "events", "create"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    } <= rules
    # Prompts and tools come from ConfigMaps; the only Secret read is a notification webhook's
    # URL or token, and only with operator.rbac.notificationSecrets (off by default).
    assert {(g, r, v) for g, r, v in rules if r == "secrets"} == {("", "secrets", "get")}
    text = (TEMPLATES / "operator-rbac.yaml").read_text()
    assert re.search(r"if \.Values\.operator\.rbac\.notificationSecrets \}\}\n(  #.*\n)+  - apiGroups: \[\"\"\]\n    resources: \[secrets\]\n    verbs: \[get\]\n  \{\{- end \}\}", text)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["rbac"]["notificationSecrets"] is False
    assert not any(verb in ("*", "deletecollection", "escalate", "bind") for _, _, verb in rules)
    # Plans are TrafficPlans now: the operator writes no ConfigMap, it only deletes its old plan ConfigMaps.
    assert not {("", "configmaps", "create"), ("", "configmaps", "patch")} & rules


def test_router_role_is_read_only():
    docs = skeleton((TEMPLATES / "router-rbac.yaml").read_text())
    rules = granted(docs, "x")  # kind is templated
    assert sorted(router_needs() - rules) == []
    assert {verb for _, _, verb in rules} <= {"get", "list", "watch"}
    # The least-privilege option: Roles in router.rbac.secretNamespaces read Secrets and nothing else
    # (list/watch for the key Secrets, get for endpoint tokens), and ask for no verb the ClusterRole lacks.
    assert granted(docs, "Role") == {("", "secrets", v) for v in ("get", "list", "watch")}
    assert granted(docs, "Role") <= rules


def all_template_roles() -> list[dict[str, Any]]:
    # Every template that holds RBAC objects is named *rbac* or *roles* (the others are not skeleton-parsable).
    files = sorted({*TEMPLATES.glob("*rbac*.yaml"), *TEMPLATES.glob("*roles*.yaml")})
    assert {p.name for p in TEMPLATES.glob("*.yaml") if re.search(r"^kind: .*Role", p.read_text(), re.M)} <= {p.name for p in files}
    return [d for p in files for d in skeleton(p.read_text()) if d.get("rules")]


def test_only_the_operator_may_write_trafficplans():
    """A plan decides where prompts go and which Secret becomes a bearer token."""
    writers = [
        d["metadata"]["name"]
        for d in all_template_roles()
        if any((g, r, v) in granted([d], d["kind"]) for g in (GROUP,) for r in ("trafficplans", "*") for v in ("create", "update", "patch", "delete", "*"))
    ]
    assert writers == ["x-operator"]


def test_aggregated_roles_let_users_write_stacks_and_only_read_plans():
    docs = skeleton((TEMPLATES / "aggregate-roles.yaml").read_text())
    by_aggregation = {
        label.rsplit("-", 1)[-1]: granted([d], "ClusterRole")
        for d in docs
        for label, value in d["metadata"]["labels"].items()
        if label.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true"
    }
    assert set(by_aggregation) == {"edit", "admin", "view"}
    for role in ("edit", "admin"):
        rules = by_aggregation[role]
        assert {(GROUP, PLURAL, v) for v in ("get", "list", "watch", "create", "update", "patch", "delete")} <= rules
        assert {v for g, r, v in rules if r == "trafficplans"} == {"get", "list", "watch"}
        assert not any(r == f"{PLURAL}/status" and v not in ("get", "list", "watch") for _, r, v in rules)
    assert {v for _, _, v in by_aggregation["view"]} == {"get", "list", "watch"}
    assert {(GROUP, "trafficplans", "get"), (GROUP, PLURAL, "list")} <= by_aggregation["view"]


def test_rbac_check_fails_when_a_rule_is_missing():
    docs = skeleton((TEMPLATES / "operator-rbac.yaml").read_text())
    for doc in docs:
        if doc.get("kind") == "ClusterRole":
            doc["rules"] = [r for r in doc["rules"] if "configmaps" not in r["resources"]]
    missing = operator_needs() - granted(docs, "ClusterRole")
    assert ("", "configmaps", "delete") in missing and ("", "configmaps", "list") in missing


# ------------------------------------------------------------- helm render


def helm() -> str | None:
    return os.environ.get("INFERSTACK_HELM") or shutil.which("helm")


needs_helm = pytest.mark.skipif(
    helm() is None, reason="no helm binary (set INFERSTACK_HELM or put helm on PATH)"
)


def render(*sets: str) -> list[dict[str, Any]]:
    args = [
        helm(),
        "template",
        "demo",
        str(CHART),
        "--namespace",
        "inferstack-system",
        "--kube-version",
        "1.34.0",
    ]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@needs_helm
def test_helm_lint():
    subprocess.run(
        [helm(), "lint", "--strict", str(CHART)], check=True, capture_output=True, text=True, timeout=60
    )


@needs_helm
def test_helm_render_defaults():
    docs = render()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == [
        "ClusterRole/demo-inferstack-edit",
        "ClusterRole/demo-inferstack-operator",
        "ClusterRole/demo-inferstack-router",
        "ClusterRole/demo-inferstack-view",
        "ClusterRoleBinding/demo-inferstack-operator",
        "ClusterRoleBinding/demo-inferstack-router",
        "ConfigMap/demo-inferstack-dashboard",
        "ConfigMap/demo-inferstack-operator-config",
        "Deployment/demo-inferstack-operator",
        "Deployment/demo-inferstack-router",
        "PodDisruptionBudget/demo-inferstack-operator",
        "PodDisruptionBudget/demo-inferstack-router",
        "Role/demo-inferstack-operator-leader-election",
        "RoleBinding/demo-inferstack-operator-leader-election",
        "Secret/demo-inferstack-router-feedback",
        "Service/demo-inferstack-operator-metrics",
        "Service/demo-inferstack-router",
        "Service/demo-inferstack-router-metrics",
        "ServiceAccount/demo-inferstack-operator",
        "ServiceAccount/demo-inferstack-router",
    ]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    operator = by_name["Deployment", "demo-inferstack-operator"]
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = operator["spec"]["template"]["spec"]
    assert {e["name"] for e in pod["containers"][0]["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    assert pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert by_name["PodDisruptionBudget", "demo-inferstack-operator"]["spec"]["minAvailable"] == 1
    lease_role = by_name["Role", "demo-inferstack-operator-leader-election"]
    assert lease_role["metadata"]["namespace"] == "inferstack-system"
    assert granted([lease_role], "Role") == leader_election_needs()
    assert "--config=/etc/inferstack/config.yaml" in pod["containers"][0]["args"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    config = yaml.safe_load(by_name["ConfigMap", "demo-inferstack-operator-config"]["data"]["config.yaml"])
    election = OperatorConfig.model_validate(config).leader_election
    assert (election.enabled, election.lease_name, election.lease_namespace) == (True, "demo-inferstack-operator", "inferstack-system")
    assert by_name["Service", "demo-inferstack-router"]["spec"]["ports"][0]["port"] == 8080
    router_pod = by_name["Deployment", "demo-inferstack-router"]["spec"]["template"]["spec"]
    assert (
        router_pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"][
            "app.kubernetes.io/component"
        ]
        == "router"
    )
    assert router_pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    rules = granted(
        [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("operator")],
        "ClusterRole",
    )
    assert sorted(operator_needs() - {("", "secrets", "get")} - rules) == []
    assert not any(r == "secrets" for _, r, _ in rules), "notification Secrets are opt-in"
    opted = render("operator.rbac.notificationSecrets=true")
    assert ("", "secrets", "get") in granted([d for d in opted if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("operator")], "ClusterRole")


@needs_helm
def test_helm_render_operator_store_secrets():
    """The index check's Secret reads: none by default, else by name in the listed namespaces only."""
    def store_docs(docs):
        return {(d["kind"], d["metadata"]["namespace"]): d for d in docs if d["metadata"]["name"] == "demo-inferstack-operator-store-secrets"}

    assert store_docs(render()) == {}
    docs = render("operator.rbac.storeSecrets.team-a={support-store,billing-store}", "operator.rbac.storeSecrets.team-b={kb}")
    by = store_docs(docs)
    assert sorted(by) == [("Role", "team-a"), ("Role", "team-b"), ("RoleBinding", "team-a"), ("RoleBinding", "team-b")]
    assert by["Role", "team-a"]["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["support-store", "billing-store"], "verbs": ["get"]}
    ]
    assert by["Role", "team-b"]["rules"][0]["resourceNames"] == ["kb"]
    for ns in ("team-a", "team-b"):
        assert by["RoleBinding", ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "demo-inferstack-operator-store-secrets"}
        assert by["RoleBinding", ns]["subjects"] == [
            {"kind": "ServiceAccount", "name": "demo-inferstack-operator", "namespace": "inferstack-system"}
        ]
    operator_role = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "demo-inferstack-operator"]
    assert not any(r == "secrets" for _, r, _ in granted(operator_role, "ClusterRole")), "no Secret outside the named ones"
    # A namespace listed without names would make a Role that reads all of its Secrets: refused.
    for empty in ("operator.rbac.storeSecrets.team-a={}", "operator.rbac.storeSecrets.team-a=kb"):
        with pytest.raises(subprocess.CalledProcessError) as failed:
            render(empty)
        assert "must be a list of Secret names" in failed.value.stderr


@needs_helm
def test_helm_render_grafana_dashboard():
    """The generated dashboard, byte for byte, in a ConfigMap Grafana's sidecar picks up; off when disabled."""
    docs = render("metrics.grafanaDashboard.annotations.grafana_folder=LLM")
    dashboard = next(d for d in docs if d["metadata"]["name"] == "demo-inferstack-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert dashboard["data"]["inferstack.json"] + "\n" == (CHART / "dashboards" / "inferstack.json").read_text()
    assert not [d for d in render("metrics.grafanaDashboard.enabled=false") if d["metadata"]["name"] == "demo-inferstack-dashboard"]


@needs_helm
def test_helm_render_router_ports_and_auth():
    """Clients get the OpenAI port only; probes and Prometheus use the metrics port; keys are on by default."""
    docs = render("metrics.serviceMonitor.enabled=true")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    container = by_name["Deployment", "demo-inferstack-router"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "metrics": 9091}
    assert "--metrics-port=9091" in container["args"] and "--auth=api-keys" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert [p["name"] for p in by_name["Service", "demo-inferstack-router"]["spec"]["ports"]] == ["http"]
    assert by_name["Service", "demo-inferstack-router-metrics"]["spec"]["ports"][0]["targetPort"] == "metrics"
    assert by_name["ServiceMonitor", "demo-inferstack-router"]["spec"]["endpoints"][0]["port"] == "metrics"
    router_rules = granted([by_name["ClusterRole", "demo-inferstack-router"]], "ClusterRole")
    assert {("", "secrets", "list"), ("", "secrets", "watch")} <= router_rules  # the key Secrets

    proxied = render("router.auth.mode=trusted-proxy", "router.auth.trustedProxy.cidrs={10.0.0.0/8,fd00::/8}",
                     "router.auth.trustedProxy.tenantHeader=x-forwarded-user")  # fmt: skip
    router = next(d for d in proxied if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--trusted-proxy-cidrs=10.0.0.0/8,fd00::/8" in args and "--trusted-proxy-tenant-header=x-forwarded-user" in args
    assert not [a for a in args if a.startswith("--trusted-proxy-record-content-header")]  # unset: users cannot opt out
    opting = render("router.auth.mode=trusted-proxy", "router.auth.trustedProxy.cidrs={10.0.0.0/8}",
                    "router.auth.trustedProxy.tenantHeader=x-forwarded-user",
                    "router.auth.trustedProxy.recordContentHeader=x-record-content")  # fmt: skip
    router = next(d for d in opting if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))
    assert "--trusted-proxy-record-content-header=x-record-content" in router["spec"]["template"]["spec"]["containers"][0]["args"]
    role = next(d for d in proxied if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("router"))
    assert ("", "secrets", "list") not in granted([role], "ClusterRole")  # no keys, no Secrets listed
    with pytest.raises(subprocess.CalledProcessError) as err:
        render("router.auth.mode=trusted-proxy", "router.auth.trustedProxy.tenantHeader=x-forwarded-user")
    assert "trustedProxy.cidrs is required" in err.value.stderr


@needs_helm
def test_helm_render_router_limits():
    """router.limits reaches the router's args, as numbers the router's own parser takes (not 6.7108864e+07)."""
    from inferstack.router.main import parse_args

    def router_args(docs):
        router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))
        return router["spec"]["template"]["spec"]["containers"][0]["args"]

    args = router_args(render())
    for name, (flag, _) in ROUTER_LIMITS.items():
        assert f"{flag}={values()['router']['limits'][name]}" in args, (flag, args)
    changed = {"cacheMaxBytes": 134217728, "cacheMaxEntryBytes": 65536, "maxConcurrentStreams": 64,
               "streamWriteTimeoutSeconds": 7.5, "maxRequestBytes": 1048576, "requestReadTimeoutSeconds": 12.5}
    args = router_args(render(*(f"router.limits.{k}={v}" for k, v in changed.items())))
    parsed = parse_args(args)
    for name, (flag, attr) in ROUTER_LIMITS.items():
        assert f"{flag}={changed[name]}" in args, (flag, args)
        assert getattr(parsed, attr) == changed[name], attr
    # Stated once; router.extraArgs, appended after them, still win (argparse keeps the last).
    assert sum(a.startswith("--cache-max-bytes") for a in args) == 1


@needs_helm
def test_helm_render_options():
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "router.watchNamespace=team-a",
        "router.rbac.readSecrets=true",
        "operator.watchNamespaces={team-a,team-b}",
        "router.podDisruptionBudget.enabled=false",
    )
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ServiceMonitor", "demo-inferstack-router") in kinds and (
        "ServiceMonitor",
        "demo-inferstack-operator",
    ) in kinds
    assert ("Role", "demo-inferstack-router") in kinds and (
        "ClusterRole",
        "demo-inferstack-router",
    ) not in kinds
    assert ("PodDisruptionBudget", "demo-inferstack-router") not in kinds
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "demo-inferstack-router")
    assert role["metadata"]["namespace"] == "team-a" and ("", "secrets", "get") in granted([role], "Role")
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")
    )
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))
    assert "--namespace=team-a" in router["spec"]["template"]["spec"]["containers"][0]["args"]
    docs = render("router.enabled=false")
    assert not any("router" in d["metadata"]["name"] for d in docs)


@needs_helm
def test_helm_render_router_rbac():
    """Default: plans and stacks, nothing else. Secrets cluster-wide, or only in listed namespaces."""
    def router_rules(docs, kind="ClusterRole"):
        return granted([d for d in docs if d["kind"] == kind and d["metadata"]["name"] == "demo-inferstack-router"], kind)

    def router_args(docs):
        router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))
        return router["spec"]["template"]["spec"]["containers"][0]["args"]

    docs = render()
    keys = {("", "secrets", "list"), ("", "secrets", "watch")}  # the API-key Secrets (router.auth.mode api-keys)
    assert router_rules(docs) == {(GROUP, r, v) for r in ("trafficplans", PLURAL) for v in ("get", "list", "watch")} | keys
    assert "--count-legacy-plans" not in router_args(docs)

    docs = render("router.rbac.readSecrets=true", "router.countLegacyPlans=true")
    assert {("", "secrets", "get"), ("", "configmaps", "list"), ("", "configmaps", "watch")} <= router_rules(docs)
    assert "--count-legacy-plans" in router_args(docs)
    assert not any(d["kind"] in ("Role", "RoleBinding") and "router" in d["metadata"]["name"] for d in docs)

    def secret_roles(docs):
        roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role" and "router" in d["metadata"]["name"]}
        bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding" and "router" in d["metadata"]["name"]}
        assert sorted(roles) == sorted(bindings)
        for ns in roles:
            assert bindings[ns]["roleRef"]["name"] == roles[ns]["metadata"]["name"]
            assert bindings[ns]["subjects"] == [
                {"kind": "ServiceAccount", "name": "demo-inferstack-router", "namespace": "inferstack-system"}
            ]
        return {ns: granted([role], "Role") for ns, role in roles.items()}

    # router.rbac.secretNamespaces: every Secret rule leaves the ClusterRole for a Role in each listed
    # namespace, and the router watches the key Secrets of those namespaces only, one watch each.
    docs = render("router.rbac.secretNamespaces={team-a,team-b}")
    assert not any(r == "secrets" for _, r, _ in router_rules(docs))
    assert secret_roles(docs) == {"team-a": keys, "team-b": keys}
    args = router_args(docs)
    assert "--api-key-namespaces=team-a,team-b" in args and not any(a.startswith("--namespace") for a in args)
    from inferstack.router.main import key_namespaces, parse_args

    assert key_namespaces(parse_args(args)) == ["team-a", "team-b"]

    docs = render("router.rbac.readSecrets=true", "router.rbac.secretNamespaces={team-a,team-b}")
    assert not any(r == "secrets" for _, r, _ in router_rules(docs))
    assert secret_roles(docs) == {"team-a": keys | {("", "secrets", "get")}, "team-b": keys | {("", "secrets", "get")}}

    # No key Secrets to list (trusted-proxy): the Roles read tokens only, and the router gets no namespaces.
    proxied = ("router.auth.mode=trusted-proxy", "router.auth.trustedProxy.cidrs={10.0.0.0/8}",
               "router.auth.trustedProxy.tenantHeader=x-forwarded-user")  # fmt: skip
    docs = render(*proxied, "router.rbac.readSecrets=true", "router.rbac.secretNamespaces={team-a}")
    assert secret_roles(docs) == {"team-a": {("", "secrets", "get")}}
    assert not any(a.startswith("--api-key-namespaces") for a in router_args(docs))
    assert secret_roles(render(*proxied, "router.rbac.secretNamespaces={team-a}")) == {}  # nothing to read

    # router.watchNamespace already narrows every rule, key Secrets included, to its one namespace.
    docs = render("router.watchNamespace=team-a", "router.rbac.secretNamespaces={team-a,team-b}")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Role" and "router" in d["metadata"]["name"]] == [
        "demo-inferstack-router"
    ]  # its one Role, no per-namespace Secret Roles
    assert keys <= router_rules(docs, "Role")
    args = router_args(docs)
    assert "--namespace=team-a" in args and not any(a.startswith("--api-key-namespaces") for a in args)

    docs = render("rbac.aggregateToDefaultRoles=false")
    assert not any(d["metadata"]["name"] in ("demo-inferstack-edit", "demo-inferstack-view") for d in docs)


def render_notes(tmp: Path, *sets: str) -> str:
    """NOTES.txt as ``helm install`` prints it (``helm template`` leaves it out): rendered with
    ``tpl`` from a ConfigMap of a copy of the chart."""
    chart = tmp / "inferstack"
    shutil.copytree(CHART, chart)
    (chart / "NOTES.src").write_text((TEMPLATES / "NOTES.txt").read_text())
    (chart / "templates" / "notes-under-test.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get "NOTES.src") . | toJson }}\n'
    )
    args = [helm(), "template", "demo", str(chart), "--namespace", "inferstack-system", "--kube-version", "1.34.0",
            "--show-only", "templates/notes-under-test.yaml"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


@needs_helm
def test_install_notes_warn_while_the_router_lists_secrets_everywhere(tmp_path):
    """The default (api-keys, no namespaces listed) works in any namespace, and says what it costs."""
    warning = "WARNING: the router may list, and so read, every Secret of every namespace"
    notes = render_notes(tmp_path / "default")
    assert warning in notes and "router.rbac.secretNamespaces" in notes and "inferstack-router" in notes
    for i, sets in enumerate([
        ("router.rbac.secretNamespaces={team-a}",),
        ("router.watchNamespace=team-a",),
        ("router.auth.mode=none",),
        ("router.enabled=false",),
    ]):  # fmt: skip
        assert warning not in render_notes(tmp_path / str(i), *sets), sets


@needs_helm
def test_helm_render_feedback_key():
    """Every router replica mounts the one feedback key: the chart's generated Secret, or the user's."""
    def router_pod(docs):
        return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))["spec"]["template"]["spec"]

    docs = render()
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "demo-inferstack-router-feedback" and len(secret["data"]["key"]) >= 48
    pod = router_pod(docs)
    assert "--feedback-key-file=/etc/inferstack/feedback/key" in pod["containers"][0]["args"]
    volume = next(v for v in pod["volumes"] if v["name"] == "feedback-key")
    assert volume["secret"]["secretName"] == "demo-inferstack-router-feedback"

    docs = render("router.feedback.existingSecret=shared-key", "router.feedback.existingSecretKey=current")
    assert not any(d["kind"] == "Secret" for d in docs)
    pod = router_pod(docs)
    assert "--feedback-key-file=/etc/inferstack/feedback/current" in pod["containers"][0]["args"]
    assert next(v for v in pod["volumes"] if v["name"] == "feedback-key")["secret"]["secretName"] == "shared-key"

    docs = render("router.feedback.enabled=false")
    pod = router_pod(docs)
    assert not any(d["kind"] == "Secret" for d in docs)
    assert not any(a.startswith("--feedback-key-file") for a in pod["containers"][0]["args"])


@needs_helm
def test_helm_render_tracing_and_audit_log():
    """Traces are off until an endpoint is named; the audit log is on by default."""
    def router_args(*sets: str) -> list[str]:
        docs = render(*sets)
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("router"))
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    args = router_args()
    assert "--audit-log" in args and not any(a.startswith(("--otlp-endpoint", "--trace-sample-rate")) for a in args)
    args = router_args("router.tracing.otlpEndpoint=http://otel:4318", "router.tracing.sampleRate=0.25", "router.auditLog=false")
    assert "--otlp-endpoint=http://otel:4318" in args and "--trace-sample-rate=0.25" in args and "--audit-log" not in args


@needs_helm
def test_helm_render_operator_without_leader_election():
    docs = render("operator.config.leaderElection.enabled=false", "operator.replicas=1")
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "demo-inferstack-operator")
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"] == {"type": "Recreate"}
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("PodDisruptionBudget", "demo-inferstack-operator") not in kinds, "minAvailable 1 of 1 would block drains"
    assert not any(k in ("Role", "RoleBinding") and "leader-election" in n for k, n in kinds)
    with pytest.raises(subprocess.CalledProcessError) as err:
        render("operator.config.leaderElection.enabled=false")
    assert "operator.replicas > 1 needs operator.config.leaderElection.enabled" in err.value.stderr
    docs = render("operator.config.leaderElection.leaseNamespace=infra", "operator.config.leaderElection.leaseName=ops")
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("leader-election"))
    assert role["metadata"]["namespace"] == "infra"
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("operator-config"))["data"]["config.yaml"])
    assert (config["leaderElection"]["leaseName"], config["leaderElection"]["leaseNamespace"]) == ("ops", "infra")



@needs_helm
def test_helm_render_network_policies():
    """Off by default; on: the router's OpenAI port from the named clients and its metrics from Prometheus only,
    the operator's egress only where it must go once the API server's address is given, and each listed
    namespace's model servers and embedders reachable from the routers, its golden-set Jobs and Prometheus only."""
    assert not [d for d in render() if d["kind"] == "NetworkPolicy"]
    clients = "networkPolicy.routerClients[0].namespaceSelector.matchLabels.team=apps"
    docs = render("networkPolicy.enabled=true", clients, "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
                  "networkPolicy.modelServerNamespaces={team-a,team-b}")  # fmt: skip
    policies = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert sorted(policies) == [
        ("inferstack-system", "demo-inferstack-operator"),
        ("inferstack-system", "demo-inferstack-router"),
        ("team-a", "demo-inferstack-model-servers"),
        ("team-b", "demo-inferstack-model-servers"),
    ]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    router = policies["inferstack-system", "demo-inferstack-router"]
    assert router["policyTypes"] == ["Ingress"]
    assert router["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]},
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": prometheus},
    ]
    operator = policies["inferstack-system", "demo-inferstack-operator"]
    assert operator["policyTypes"] == ["Ingress", "Egress"]
    assert operator["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": prometheus}]
    assert operator["egress"][0] == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}
    assert {p["port"] for rule in operator["egress"] for p in rule["ports"]} == {6443, 53, 9090}
    model = policies["team-a", "demo-inferstack-model-servers"]
    # the embedding models the operator runs (core/embedder.py) too: the router embeds queries there
    assert model["podSelector"] == {
        "matchExpressions": [{"key": "inferstack.dev/component", "operator": "In", "values": ["model-server", "embedder"]}]
    }
    sources = model["ingress"][0]["from"]
    assert sources[0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "inferstack-system"}}
    assert sources[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "router"
    assert sources[1] == {"podSelector": {"matchLabels": {"inferstack.dev/component": "golden"}}}
    assert sources[2:] == prometheus
    # without the API server's address the operator's egress stays open (restricting it would cut it off)
    open_egress = render("networkPolicy.enabled=true")
    assert [d["spec"]["policyTypes"] for d in open_egress if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("operator")] == [["Ingress"]]
