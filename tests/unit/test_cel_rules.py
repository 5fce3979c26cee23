"""The CRD's CEL rules and their Python twins: present in the generated schema, the same verdicts.

The API server's side runs in tests/e2e/test_validation_e2e.py with the same cases
(tests/cel_cases.py); here each case goes through pydantic, as the operator reads a spec.
"""

from __future__ import annotations

import random
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from inferstack.api import rules, v1alpha1
from inferstack.api.crdgen import build_crd
from inferstack.api.rules import PY, RE2, Rule, unknown_placeholders
from inferstack.api.v1alpha1 import InferenceStackSpec, Model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import cel_cases  # noqa: E402
from cel_cases import SAME, SCHEMA, Refused  # noqa: E402


def crd_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_entries(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(schema path, x-kubernetes-validations entry) for every rule in ``node``."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out += [(path, e) for e in node.get("x-kubernetes-validations", [])]
        for key, value in node.items():
            if key == "properties":
                for name, prop in value.items():
                    out += schema_entries(prop, f"{path}.{name}")
            elif key in ("items", "additionalProperties"):
                out += schema_entries(value, f"{path}[]")
    return out


def model_classes() -> list[type[Model]]:
    return [c for c in vars(v1alpha1).values() if isinstance(c, type) and issubclass(c, Model) and c is not Model]


def at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.strip(".").split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    return node


# ------------------------------------------------------------------ schema


# Where each model's rules must appear in the CRD (one place per model).
PLACES = {
    "EngineArgs": ".spec.model.engine",
    "ModelSpec": ".spec.model",
    "PromptSpec": ".spec.prompt",
    "RetrieverSpec": ".spec.retriever",
    "EmbeddingSpec": ".spec.retriever.embedding",
    "ToolsSpec": ".spec.tools",
    "RolloutStep": ".spec.rollout.steps[]",
    "RolloutSpec": ".spec.rollout",
    "Threshold": ".spec.gates[].threshold",
    "Compare": ".spec.gates[].compare",
    "PrometheusQuery": ".spec.gates[].prometheus",
    "Gate": ".spec.gates[]",
    "TrafficSpec": ".spec.traffic",
    "SliceSpec": ".spec.evaluation.slices",
    "RuleCheck": ".spec.evaluation.evaluators[].rule",
    "Evaluator": ".spec.evaluation.evaluators[]",
    "LLMJudge": ".spec.evaluation.evaluators[].judge",
    "EvaluationSpec": ".spec.evaluation",
    "Webhook": ".spec.notifications.webhooks[]",
    "NotificationsSpec": ".spec.notifications",
    "InferenceStackSpec": ".spec",
}


def test_every_model_rule_is_in_the_crd_where_its_model_is() -> None:
    schema = crd_schema()
    with_rules = {c.__name__ for c in model_classes() if c.cel_rules}
    assert with_rules == set(PLACES), "add the new model's place to PLACES"
    for cls in model_classes():
        if not cls.cel_rules:
            continue
        entries = at(schema, PLACES[cls.__name__]).get("x-kubernetes-validations", [])
        assert entries == [r.entry() for r in cls.cel_rules if r.cel is not None], cls.__name__


def test_every_duration_carries_the_duration_rule() -> None:
    durations = [
        ".spec.cache.responseCache.ttl",
        ".spec.rollout.analysisInterval",
        ".spec.rollout.progressDeadline",
        ".spec.rollout.scaleDownDelay",
        ".spec.rollout.steps[].shadow.duration",
        ".spec.rollout.steps[].canary.duration",
        ".spec.rollout.steps[].pause.duration",
        ".spec.rollout.steps[].ramp.duration",
        ".spec.rollout.steps[].evaluate.timeout",
        ".spec.evaluation.evaluators[].judge.timeout",
        ".spec.evaluation.evaluators[].feedback.maxAge",
        ".spec.retriever.timeout",
    ]
    schema = crd_schema()
    found = sorted(p for p, e in schema_entries(schema) if e["message"] == v1alpha1._MAX_DURATION.message)
    assert found == sorted(durations)
    for path in durations:
        assert at(schema, path)["pattern"] == v1alpha1.DURATION_PATTERN


def test_the_crd_has_no_rule_that_is_not_defined_in_the_models() -> None:
    defined = {r.cel for c in model_classes() for r in c.cel_rules} | {v1alpha1._MAX_DURATION.cel}
    for path, entry in schema_entries(crd_schema()):
        if path == "":  # the root's metadata.name rule, written by crdgen
            assert entry["rule"] == "self.metadata.name.size() <= 52"
            continue
        assert entry["rule"] in defined, path


def test_the_committed_crd_is_the_generated_one() -> None:
    assert yaml.safe_load((ROOT / "crds" / "inferstack.dev_inferencestacks.yaml").read_text()) == build_crd()


def test_messages_are_one_line_and_name_the_field() -> None:
    for path, entry in schema_entries(crd_schema()):
        assert "\n" not in entry["message"]
        # Rules on a duration are shared by every duration; the API server prefixes the path.
        if entry["message"] != v1alpha1._MAX_DURATION.message and path:
            assert "spec." in entry["message"] or entry["message"].startswith(("a threshold", "a compare", "each gate"))


def test_everything_a_user_writes_is_bounded() -> None:
    """maxLength, maxItems, maxProperties everywhere: the CEL cost estimate needs them, and nothing is unbounded."""
    unbounded = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return  # free-form (tolerations, tool parameters): no rule reads inside
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        elif kind == "array":
            if "maxItems" not in node:
                unbounded.append(path)
            walk(node["items"], path + "[]")
        elif kind == "object":
            if "additionalProperties" in node:
                if "maxProperties" not in node:
                    unbounded.append(path)
                walk(node["additionalProperties"], path + "{}")
            for name, prop in node.get("properties", {}).items():
                walk(prop, f"{path}.{name}")

    walk(crd_schema()["properties"]["spec"], "spec")
    assert unbounded == []


# CEL functions newer than Kubernetes 1.29 (the chart's kubeVersion), which an older API server refuses.
NEWER_CEL = re.compile(
    r"\.(format|sortBy|distinct|reverse|first|last|flatten|transformList|transformMap|transformMapEntry)\("
    r"|lists\.|cel\.bind|semver|\bip\(|\bcidr\(|\.(all|exists|exists_one)\(\s*\w+\s*,\s*\w+\s*,"
)


def test_rules_use_only_cel_that_kubernetes_1_29_has() -> None:
    for path, entry in schema_entries(crd_schema()):
        for key in ("rule", "messageExpression"):
            assert not NEWER_CEL.search(entry.get(key, "")), (path, entry[key])


# ------------------------------------------------------------ the same verdicts in Python


def python_errors(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """pydantic's errors as (path, message)."""
    try:
        InferenceStackSpec.model_validate(manifest["spec"])
    except ValidationError as e:
        out = []
        for err in e.errors():
            path = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            message = str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else err["msg"]
            out.append((path, message))
        return out
    return []


@pytest.mark.parametrize("case", cel_cases.REFUSED, ids=[c.id for c in cel_cases.REFUSED])
def test_python_agrees_with_the_api_server(case: Refused) -> None:
    errors = python_errors(case.manifest)
    if case.python == SCHEMA:
        assert [p for p, _ in errors] == [case.path]
    else:
        expected = case.message if case.python == SAME else case.python
        assert [m for _, m in errors] == [expected]
        assert case.path.startswith(errors[0][0])


@pytest.mark.parametrize(("name", "manifest"), cel_cases.ACCEPTED, ids=[c[0] for c in cel_cases.ACCEPTED])
def test_python_accepts_what_the_api_server_accepts(name: str, manifest: dict[str, Any]) -> None:
    assert python_errors(manifest) == []


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_break_no_rule(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert python_errors(doc) == []


# ------------------------------------------------------------ generated regular expressions


def test_promql_fills_every_placeholder_the_crd_accepts() -> None:
    from datetime import timedelta

    from inferstack.core import promql

    for name in rules.PLACEHOLDERS:
        out = promql.render(f"x{{{{ {name} }}}}", stack="s", namespace="n", revision="r", baseline="b", slice_="a", window=timedelta(minutes=1))
        assert "{{" not in out and out != "x", name


def _re2_class_chars(cls: str) -> set[str]:
    """The characters of the RE2 space class: \\xHH ranges plus \\pZ (Unicode separators)."""
    assert cls.startswith("[") and cls.endswith(r"\pZ]")
    out = {c for c in map(chr, range(0x110000)) if unicodedata.category(c).startswith("Z")}
    for a, b in re.findall(r"\\x([0-9a-f]{2})(?:-\\x([0-9a-f]{2}))?", cls[1:-4]):
        out |= {chr(i) for i in range(int(a, 16), int(b or a, 16) + 1)}
    return out


def test_the_re2_space_class_is_pythons_whitespace() -> None:
    python = {c for c in map(chr, range(0x110000)) if re.match(r"\s", c)}
    assert _re2_class_chars(RE2.space) == python


def test_re2_and_python_regexes_differ_only_in_the_space_class() -> None:
    for name in ("any", "known", "unknown", "revision", "slice", "slice_not_regex"):
        assert getattr(RE2, name).replace(RE2.space, "SPACE") == getattr(PY, name).replace(PY.space, "SPACE")


WORDS = [*rules.PLACEHOLDERS, "stak", "slices", "Stack", "s", "", "revisions", "windo", "a b", "x1", "_"]
PIECES = ["{{", "}}", "{", "}", " ", "\t", "\u2003", "\n", "=", '"', "~", "x", "slice", *WORDS]


def random_template(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        if rng.random() < 0.4:
            pad = lambda: rng.choice(["", " ", "  ", "\t", "\u3000"])  # noqa: E731
            parts.append("{{" + pad() + rng.choice(WORDS) + pad() + "}}")
        else:
            parts.append(rng.choice(PIECES))
    return "".join(parts)


def test_the_placeholder_rule_is_promqls_verdict() -> None:
    """The CEL rule counts all placeholders and the known ones; promql.py refuses the unknown ones."""
    rng = random.Random(8)
    any_, known, unknown = re.compile(PY.any), re.compile(PY.known), re.compile(PY.unknown)
    for _ in range(20_000):
        t = random_template(rng)
        bad = unknown_placeholders(t)
        assert (len(any_.findall(t)) != len(known.findall(t))) == bool(bad), t
        first = unknown.search(t)
        assert (first.group(0) if first else None) == (bad[0] if bad else None), t


def test_the_placeholder_rule_agrees_with_promql_render() -> None:
    from datetime import timedelta

    from inferstack.core.promql import TemplateError, render

    rng = random.Random(29)
    for _ in range(5_000):
        t = random_template(rng)
        try:
            render(t, stack="s", namespace="n", revision="r", baseline="b", slice_="", window=timedelta(minutes=1))
            refused = False
        except TemplateError:
            refused = True
        assert refused == bool(unknown_placeholders(t)), t


def test_operator_owned_vllm_flags_cover_every_flag_the_operator_writes() -> None:
    from inferstack.core.objects import vllm_args

    written = set()
    for caching in (True, False):
        spec = InferenceStackSpec.model_validate(
            {**cel_cases.BASE["spec"], "model": {**cel_cases.BASE["spec"]["model"], "engine": {"maxModelLen": 4096, "enablePrefixCaching": caching}}}
        )
        written |= {a[2:] for a in vllm_args(spec, 8000) if a.startswith("--")}
    assert written == set(v1alpha1.OPERATOR_VLLM_FLAGS)


@pytest.mark.parametrize(
    ("arg", "owned"),
    [
        ("--tensor-parallel-size=2", True), ("--tensor_parallel_size", True), ("-tp", True), ("-tp 2", True),
        ("--port", True), ("--model=/x", True), ("--no-enable-prefix-caching", True),
        ("--model-loader-extra-config={}", False), ("--tokenizer-revision=v1", False), ("--max-num-seqs=8", False),
        ("--portal", False), ("-tpx", False),
    ],
)  # fmt: skip
def test_operator_owned_flag_pattern(arg: str, owned: bool) -> None:
    assert rules.matches(arg, v1alpha1.OPERATOR_VLLM_FLAG_PATTERN) == owned


def test_matches_treats_dollar_as_the_end_of_the_text() -> None:
    assert rules.matches("a" * 40, v1alpha1.COMMIT_PATTERN)
    assert not rules.matches("a" * 40 + "\n", v1alpha1.COMMIT_PATTERN)


def test_a_rule_is_one_line_with_its_message_expression_fallback() -> None:
    rule = Rule("true", "plain", lambda _: False, explain=lambda _: "first\nsecond")
    assert rule.violation(None) == "plain"
    assert Rule("true", "plain", lambda _: False, explain=lambda _: "named").violation(None) == "named"
    assert Rule("true", "plain", lambda _: True).violation(None) is None
