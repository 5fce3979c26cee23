"""The built-in checks every answer gets, declared evaluators or not (``inferstack_router_check_total``).

They are the default rule checks (``router/evaluators.py``) under fixed
names, so gates written against them keep working for stacks that declare
no ``spec.evaluation``: ``refusal`` on every answer, ``json_valid`` when the
request asked for JSON and the answer is whole.
"""

from __future__ import annotations

from typing import Any, Final

from inferstack.api.v1alpha1 import DEFAULT_REFUSAL_MARKERS, RefusalCheck, RuleCheck
from inferstack.router.evaluators import AnswerView, compile_rule, view

_REFUSAL: Final = compile_rule(RuleCheck(refusal=RefusalCheck(markers=list(DEFAULT_REFUSAL_MARKERS))), {})
_JSON: Final = compile_rule(RuleCheck.model_validate({"json": {}}), {})


def run_checks(request_body: dict[str, Any], text: str, *, truncated: bool) -> dict[str, bool]:
    """Check name -> passed; a check that does not apply to the answer is absent."""
    return check(request_body, view(text, truncated, len(text)))


def check(request_body: dict[str, Any], answer: AnswerView) -> dict[str, bool]:
    """:func:`run_checks` on a view of the answer already built: the evaluators' (``evaluators.view_of``),
    so one view serves both. These checks read only its text and whether it is truncated."""
    results = {"refusal": _REFUSAL(request_body, answer) == 1.0}
    if (json_valid := _JSON(request_body, answer)) is not None:
        results["json_valid"] = json_valid == 1.0
    return results


def quality_score(results: dict[str, bool]) -> float:
    """A 0..1 eval-style score; 1 when the answer is not a refusal."""
    return 1.0 if results.get("refusal", True) else 0.0
