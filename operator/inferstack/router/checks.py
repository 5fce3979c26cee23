"""Online checks on every answer, exported per slice so gates compare revisions on them."""

from __future__ import annotations

import json
import re
from typing import Any, Final

# Lower-cased substrings; typographic apostrophes are folded before matching.
REFUSAL_MARKERS: Final = (
    "i can't help",
    "i cannot help",
    "i cannot",
    "i can't assist",
    "i'm sorry, but",
    "i am sorry, but",
    "i'm unable to",
    "i am unable to",
    "as an ai language model",
)
MAX_CHECKED_CHARS: Final = 8192  # answers are checked on a bounded prefix


def is_refusal(text: str) -> bool:
    lowered = text[:MAX_CHECKED_CHARS].lower().replace("\u2019", "'")
    return any(marker in lowered for marker in REFUSAL_MARKERS)


def wants_json(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def is_valid_json(text: str) -> bool:
    # Models often wrap JSON in a Markdown fence; strip it like clients do.
    stripped = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


def run_checks(request_body: dict[str, Any], text: str, *, truncated: bool) -> dict[str, bool]:
    """Check name -> passed. ``json_valid`` only when JSON was asked for and the text is whole."""
    results = {"refusal": not is_refusal(text)}
    if wants_json(request_body) and not truncated:
        results["json_valid"] = is_valid_json(text)
    return results


def quality_score(results: dict[str, bool]) -> float:
    """A 0..1 eval-style score; today 1 when the answer is not a refusal."""
    return 1.0 if results.get("refusal", True) else 0.0
