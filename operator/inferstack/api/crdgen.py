"""Generate the CRDs (InferenceStack, TrafficPlan) from the pydantic types.

    python -m inferstack.api.crdgen            # write crds/
    python -m inferstack.api.crdgen --check    # exit 1 when crds/ has drifted

pydantic emits JSON Schema 2020-12; the API server wants a *structural*
OpenAPI v3.0 schema. The translation below is deliberately small: inline
``$ref``s, turn ``Optional[X]`` into an optional ``X``, map free-form objects
to ``x-kubernetes-preserve-unknown-fields`` and write the defaults that
``default_factory`` makes, which pydantic leaves out.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from inferstack import GROUP, KIND, PLURAL, VERSION
from inferstack.api.v1alpha1 import InferenceStackSpec, InferenceStackStatus
from inferstack.core.trafficplan import PLAN_KIND, PLAN_PLURAL, TrafficPlan

CRD_DIR = Path("crds")
CRD_PATH = CRD_DIR / f"{GROUP}_{PLURAL}.yaml"

# Keys of JSON Schema that a structural schema does not accept or that add noise.
_DROP = {"title", "$defs", "additionalProperties"}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableRevision"},
    {"name": "Candidate", "type": "string", "jsonPath": ".status.candidateRevision"},
    {"name": "Step", "type": "string", "jsonPath": ".status.rollout.step"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.traffic.candidateWeight", "description": "Percent of users on the candidate"},
    {"name": "Gates", "type": "string", "jsonPath": ".status.gateSummary", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if node.get("x-kubernetes-int-or-string"):
        return node  # Kubernetes' own union (a resource quantity): anyOf [integer, string] is structural here
    if "anyOf" in node:
        # Optional[X] is anyOf [X, null]; an absent field already means "none".
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional[X] are not structural: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _resolve({**options[0], **rest}, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        if "description" in node:
            out["description"] = node["description"]
        return out
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {k: _structural(v) for k, v in value.items()}
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 puts the bound here; OpenAPI v3.0 wants a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "items":
            out[key] = _structural(value)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out:
        value_schema = node.get("additionalProperties")
        if isinstance(value_schema, dict):
            out["additionalProperties"] = _structural(value_schema)
    return out


def _fill_factory_defaults(model: type[BaseModel], schema: dict[str, Any], defs: dict[str, Any]) -> None:
    """pydantic omits defaults made by default_factory; the API server should apply them."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        if field.default_factory is not None and "default" not in prop:
            value = field.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                # The full object, not {}: the API server validates a default
                # against CEL rules without applying nested defaults first.
                prop["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            elif isinstance(value, list):
                prop["default"] = [v.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(v, BaseModel) else v for v in value]
            else:
                prop["default"] = value
        # recurse into nested models
        annotation = field.annotation
        for candidate in (*getattr(annotation, "__args__", ()), annotation):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                ref = prop.get("$ref") or next((o.get("$ref") for o in prop.get("anyOf", []) if "$ref" in o), None)
                if ref:
                    _fill_factory_defaults(candidate, defs[ref.split("/")[-1]], defs)
            inner = getattr(candidate, "__args__", ())
            for item in inner:
                if isinstance(item, type) and issubclass(item, BaseModel):
                    ref = prop.get("items", {}).get("$ref")
                    if ref:
                        _fill_factory_defaults(item, defs[ref.split("/")[-1]], defs)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    _fill_factory_defaults(model, raw, defs)
    return _structural(_resolve(raw, defs))


def build_crd() -> dict[str, Any]:
    spec = openapi_schema(InferenceStackSpec)
    spec["description"] = "What the stack serves and how changes reach users."
    status = openapi_schema(InferenceStackStatus)
    status["description"] = "Written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "annotations": {"inferstack.dev/generated-by": "python -m inferstack.api.crdgen; do not edit"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["istack"],
                "categories": ["inferstack"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A model, prompt, retriever, tools and cache namespace deployed as one unit.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    # Revision objects are named <stack>-<10 hex>, and Service names are DNS labels (63).
                                    "rule": "self.metadata.name.size() <= 52",
                                    "message": "metadata.name must be at most 52 characters: the operator appends -<revision> to name each revision's Service",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


PLAN_PRINTER_COLUMNS = [
    {"name": "Stack", "type": "string", "jsonPath": ".spec.stack"},
    {"name": "Serial", "type": "integer", "jsonPath": ".spec.serial"},
    {"name": "Stable", "type": "string", "jsonPath": ".spec.stable.revision"},
    {"name": "Candidate", "type": "string", "jsonPath": ".spec.candidate.revision"},
    {"name": "Weight", "type": "integer", "jsonPath": ".spec.candidateWeight", "description": "Percent of users on the candidate"},
    {"name": "Shadow", "type": "integer", "jsonPath": ".spec.shadowPercent", "description": "Percent of requests mirrored"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _without_cel(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_cel(n) for n in node]
    if not isinstance(node, dict):
        return node
    return {k: _without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}


def build_plan_crd() -> dict[str, Any]:
    """The TrafficPlan CRD: ``spec`` is the plan the router reads (``inferstack.core.trafficplan.TrafficPlan``).

    Its own resource so that RBAC can tell it apart from ConfigMaps: only the
    operator's ServiceAccount may write it (the chart's aggregated roles give
    namespace users view only). The CEL rules of the evaluators are left out:
    the operator builds a plan from a stack the API server validated already.
    The fields the router fills in memory (``apiKey``, ``retrieval.storeDsn``, ``judgeApiKeys``) are
    left out too, so a token can never be stored in a plan.
    """
    spec = _without_cel(openapi_schema(TrafficPlan))
    for bundle in ("stable", "candidate"):
        del spec["properties"][bundle]["properties"]["apiKey"]
        del spec["properties"][bundle]["properties"]["retrieval"]["properties"]["storeDsn"]
    del spec["properties"]["evaluation"]["properties"]["judgeApiKeys"]
    spec["properties"]["evaluation"].get("default", {}).pop("judgeApiKeys", None)
    spec["description"] = "Where the stack's requests go; written by the operator only."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLAN_PLURAL}.{GROUP}",
            "annotations": {"inferstack.dev/generated-by": "python -m inferstack.api.crdgen; do not edit"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": PLAN_KIND,
                "listKind": f"{PLAN_KIND}List",
                "plural": PLAN_PLURAL,
                "singular": PLAN_KIND.lower(),
                "shortNames": ["tplan"],
                "categories": ["inferstack"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": PLAN_PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A stack's traffic plan. The router obeys it only when the live InferenceStack of the same name and UID controls it.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_all() -> dict[Path, str]:
    """Every generated CRD file by its path under crds/."""
    out = {}
    for crd in (build_crd(), build_plan_crd()):
        names = crd["spec"]["names"]
        out[CRD_DIR / f"{crd['spec']['group']}_{names['plural']}.yaml"] = yaml.safe_dump(crd, sort_keys=False, width=100)
    return out


def render() -> str:
    return render_all()[CRD_PATH]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when a committed CRD differs")
    parser.add_argument("--out", type=Path, default=CRD_DIR, help="directory of the CRD files")
    args = parser.parse_args(argv)
    drifted = 0
    for rel, text in render_all().items():
        path = args.out / rel.name
        if args.check:
            current = path.read_text() if path.exists() else ""
            if current != text:
                sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), "generated"))
                print(f"\n{path} is out of date: run `make manifests` and commit it", file=sys.stderr)
                drifted = 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return drifted


if __name__ == "__main__":
    sys.exit(main())
