"""Rule-check evaluators: the stack's declared checks, compiled once per plan, run on every answer.

Each evaluator turns one answer into one sample: 1.0 (pass), 0.0 (fail), or
None when the check does not apply to that answer (``json`` when no JSON was
asked for, ``toolArguments`` without a tool call, ``citesRetrieved`` when no
document was retrieved for the request, a verdict that would need more of a
truncated answer than the router kept). A sample is what the
one-shape eval metrics count (samples, sum, sum of squares) and what an
evaluator gate compares between the candidate and the stable revision.

Patterns run on RE2 (linear time, no backtracking): a stack owner's regex
runs on every answer in a router shared by many stacks, and must not be able
to stall it. JSON Schemas are compiled once per plan (jsonschema-rs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Protocol

import jsonschema_rs
import re2

from inferstack.api.v1alpha1 import Evaluator, RuleCheck

MAX_CHECKED_CHARS: Final = 8192  # answers are checked on a bounded prefix
MAX_CITED_ID_CHARS: Final = 256  # a longer document id is not looked for in answers (no model cites one)
# What an id must not touch to count as cited: a letter, a digit or "_" (so kb-12 is not cited by kb-123).
_NOT_ID_CHAR: Final = r"[^\pL\pN_]"
_FENCE: Final = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the JSON text the model produced, possibly a bounded prefix
    truncated: bool = False


@dataclass(frozen=True)
class AnswerView:
    """What an evaluator may look at: a bounded prefix of the answer and its tool calls."""

    text: str
    truncated: bool = False  # ``text`` is a prefix of a longer answer
    length: int = 0  # characters of the whole answer, counted even past the prefix
    tool_calls: Sequence[ToolCall] = ()
    # The ids of the documents retrieved for this answer's own request, nearest first: the
    # serving revision's retrieval (a shadow answer: the candidate's); () when nothing was retrieved.
    retrieved: Sequence[str] = ()


_new = object.__new__


def view(text: str, truncated: bool, length: int, tool_calls: Sequence[ToolCall] = (),
         retrieved: Sequence[str] = ()) -> AnswerView:
    """``AnswerView(text, truncated, length, tool_calls, retrieved)``, the same frozen instance, built in a
    third of the time: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (0.75 vs 0.3 µs), and a view is built for every answer."""
    answer = _new(AnswerView)
    fields = answer.__dict__
    fields["text"] = text
    fields["truncated"] = truncated
    fields["length"] = length
    fields["tool_calls"] = tool_calls
    fields["retrieved"] = retrieved
    return answer


Score = Callable[[Mapping[str, Any], AnswerView], float | None]


class SeenCall(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def arguments(self) -> str: ...
    @property
    def truncated(self) -> bool: ...


class SeenAnswer(Protocol):
    """What the proxy collected of an answer (``proxy.Answer``), as far as evaluators read it (read-only)."""

    @property
    def text(self) -> str: ...
    @property
    def truncated(self) -> bool: ...
    @property
    def length(self) -> int: ...
    @property
    def tool_calls(self) -> Sequence[SeenCall]: ...


def view_of(answer: SeenAnswer, retrieved: Sequence[str] = ()) -> AnswerView:
    """What evaluators see of a ``proxy.Answer`` (text prefix, length, tool calls as the router saw them)."""
    calls = tuple(ToolCall(c.name, c.arguments, c.truncated) for c in answer.tool_calls) if answer.tool_calls else ()
    return view(answer.text, answer.truncated, answer.length, calls, tuple(retrieved))


def wants_json(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def parse_json(text: str) -> tuple[bool, Any]:
    """(parsed, value); models often wrap JSON in a Markdown fence, which clients strip too."""
    try:
        return True, json.loads(_FENCE.sub("", text.strip()))
    except ValueError:
        return False, None


def _re2(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options=options)


# Whether there is a match is all the checks ask. google-re2's ``search`` builds a match object
# whose offsets it converts back from UTF-8 to characters, which made a hit cost ~5x a miss
# (~7 µs on a short answer, two checks per answer in the default set: issue 14). Its compiled
# RE2's ``Match`` on the UTF-8 text answers the same question; when a google-re2 release no
# longer has these internals, ``search`` is used.
try:
    _UNANCHORED: Any = re2._Anchor.UNANCHORED
    _NULL_SPAN: Any = re2._NULL_SPAN
except AttributeError:  # pragma: no cover - another google-re2
    _UNANCHORED = None


def _found(compiled: Any, text: str) -> bool:
    regexp = getattr(compiled, "_regexp", None) if _UNANCHORED is not None else None
    if regexp is None:
        return compiled.search(text) is not None
    encoded = text.encode("utf-8")
    return bool(regexp.Match(_UNANCHORED, encoded, 0, len(encoded))[0] != _NULL_SPAN)


def _search(compiled: Any, text: str) -> bool:
    """RE2 search on ``text``. An answer may hold a lone surrogate (a model's ``"\\ud800"``
    escape, which JSON decodes), which RE2's UTF-8 cannot take: it is searched as U+FFFD."""
    try:
        return _found(compiled, text)
    except UnicodeEncodeError:
        return _found(compiled, text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))


def _searcher(compiled: Any) -> Callable[[str], bool]:
    """``lambda text: _search(compiled, text)`` with the lookups of :func:`_found` done once per pattern
    rather than per answer (0.75 -> 0.45 µs a check on a short answer)."""
    regexp = getattr(compiled, "_regexp", None) if _UNANCHORED is not None else None
    if regexp is None:
        return lambda text: _search(compiled, text)
    match, unanchored, null_span = regexp.Match, _UNANCHORED, _NULL_SPAN

    def search(text: str) -> bool:
        try:
            encoded = text.encode()
        except UnicodeEncodeError:
            encoded = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
        return bool(match(unanchored, encoded, 0, len(encoded))[0] != null_span)

    return search


def _refusal(markers: Sequence[str]) -> Score:
    return _refusal_of(tuple(m.lower() for m in markers))


@lru_cache(maxsize=256)
def _refusal_of(markers: tuple[str, ...]) -> Score:
    """One scoring function per marker list: the built-in ``refusal`` check (router/checks.py) and a stack's
    ``refusal: {}`` evaluator (the same default markers) share it, and with it the verdict on an answer,
    kept for the last answer text it saw (the same str object: text is immutable, so the same verdict).
    A loop rather than ``any()`` over a generator: 0.83 -> 0.45 µs on a short answer."""
    last: tuple[str | None, float] = (None, 1.0)

    def score(_body: Mapping[str, Any], answer: AnswerView) -> float | None:
        nonlocal last
        text = answer.text
        seen, verdict = last
        if text is seen:
            return verdict
        lowered = text[:MAX_CHECKED_CHARS].lower().replace("\u2019", "'")
        verdict = 1.0
        for marker in markers:
            if marker in lowered:
                verdict = 0.0
                break
        last = (text, verdict)
        return verdict

    return score


def _json(_body_unused: object = None) -> Score:
    def score(body: Mapping[str, Any], answer: AnswerView) -> float | None:
        if not wants_json(body) or answer.truncated:
            return None
        return 1.0 if parse_json(answer.text)[0] else 0.0

    return score


def _json_schema(schema: Mapping[str, Any]) -> Score:
    validator = jsonschema_rs.validator_for(dict(schema))

    def score(_body: Mapping[str, Any], answer: AnswerView) -> float | None:
        if answer.truncated:
            return None  # a prefix of JSON is never valid: no verdict rather than a false failure
        ok, value = parse_json(answer.text)
        return 1.0 if ok and validator.is_valid(value) else 0.0

    return score


def tool_validators(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Tool name -> compiled validator of its arguments, from a revision's OpenAI-style tools.

    A tool whose ``parameters`` is not a JSON Schema maps to None: its calls
    give no sample (the stack's own schema is broken, not the answer).
    """
    out: dict[str, Any] = {}
    for tool in tools:
        fn = tool.get("function") or {}
        name = fn.get("name")
        if isinstance(name, str):
            try:
                out[name] = jsonschema_rs.validator_for(fn.get("parameters") or {"type": "object"})
            except (jsonschema_rs.ValidationError, ValueError):
                out[name] = None
    return out


def _tool_arguments(validators: Mapping[str, Any]) -> Score:
    def score(_body: Mapping[str, Any], answer: AnswerView) -> float | None:
        if not answer.tool_calls:
            return None
        if any(call.truncated for call in answer.tool_calls):
            return None
        for call in answer.tool_calls:
            if call.name not in validators:
                return 0.0  # a tool the stack does not declare
            validator = validators[call.name]
            if validator is None:
                return None
            ok, value = parse_json(call.arguments or "{}")
            if not ok or not validator.is_valid(value):
                return 0.0
        return 1.0

    return score


def _must_match(pattern: str, *, present: bool) -> Score:
    search = _searcher(_re2(pattern))

    def score(_body: Mapping[str, Any], answer: AnswerView) -> float | None:
        found = search(answer.text)
        if found:
            return 1.0 if present else 0.0
        if answer.truncated:
            return None  # it may be in the part the router did not keep
        return 0.0 if present else 1.0

    return score


def _max_length(limit: int) -> Score:
    def score(_body: Mapping[str, Any], answer: AnswerView) -> float | None:
        return 1.0 if answer.length <= limit else 0.0

    return score


def _citation_pattern(ids: Sequence[str]) -> Any:
    """One RE2 search for any of ``ids`` standing alone: not preceded or followed by a letter, digit or ``_``.

    Compiled per answer (ids differ per request; about 50 µs for topK 5) and
    never cached: a cache of patterns over long ids would hold megabytes.
    RE2 keeps the search linear in the answer whatever the ids are."""
    alternatives = "|".join(re2.escape(i) for i in ids)
    return _re2(f"(?:^|{_NOT_ID_CHAR})(?:{alternatives})(?:{_NOT_ID_CHAR}|$)")


def _cites_retrieved() -> Score:
    def score(_body: Mapping[str, Any], answer: AnswerView) -> float | None:
        ids = tuple(dict.fromkeys(i for i in answer.retrieved if i.strip() and len(i) <= MAX_CITED_ID_CHARS))
        if not ids:
            return None  # nothing retrieved (or nothing citable): the answer had nothing to cite
        try:
            pattern = _citation_pattern(ids)
        except (re2.error, UnicodeError):  # an id RE2 cannot take (a lone surrogate): nothing to look for
            return None
        if _search(pattern, answer.text):
            return 1.0
        return None if answer.truncated else 0.0  # the citation may be in the part the router did not keep

    return score


def compile_rule(rule: RuleCheck, tools: Mapping[str, Any]) -> Score:
    """The scoring function of one rule check; ``tools`` are the serving revision's validators."""
    if rule.refusal is not None:
        return _refusal(rule.refusal.markers)
    if rule.json_ is not None:
        return _json()
    if rule.json_schema is not None:
        return _json_schema(rule.json_schema.model_dump())
    if rule.tool_arguments is not None:
        return _tool_arguments(tools)
    if rule.must_match is not None:
        return _must_match(rule.must_match, present=True)
    if rule.must_not_match is not None:
        return _must_match(rule.must_not_match, present=False)
    if rule.cites_retrieved is not None:
        return _cites_retrieved()
    assert rule.max_length is not None  # the API demands exactly one kind
    return _max_length(rule.max_length)


@dataclass
class Evaluators:
    """A plan's evaluators for one revision, compiled; ``run`` scores one answer with each."""

    scores: dict[str, Score] = field(default_factory=dict)

    @classmethod
    def compile(cls, evaluators: Sequence[Evaluator], tools: Sequence[Mapping[str, Any]]) -> Evaluators:
        rules = {e.name: e.rule for e in evaluators if e.rule is not None}  # judges and feedback score elsewhere
        validators = tool_validators(tools) if any(r.tool_arguments for r in rules.values()) else {}
        return cls({name: compile_rule(rule, validators) for name, rule in rules.items()})

    def score(self, body: Mapping[str, Any], answer: SeenAnswer, retrieved: Sequence[str] = ()) -> dict[str, float]:
        """``run`` on a ``proxy.Answer`` (text prefix, length, tool calls as the router saw them) and the ids
        of the documents retrieved for it (by the revision that produced it)."""
        if not self.scores:
            return {}
        return self.run(body, view_of(answer, retrieved))

    def run(self, body: Mapping[str, Any], answer: AnswerView) -> dict[str, float]:
        """Evaluator name -> sample, for the evaluators that apply to this answer."""
        out = {}
        for name, score in self.scores.items():
            if (value := score(body, answer)) is not None:
                out[name] = value
        return out
