"""Validation rules defined once, for the API server (CEL) and for Python (pydantic).

A ``Rule`` carries the CEL expression the CRD gets as an
``x-kubernetes-validations`` entry, the message the API server returns, and
the same check written in Python, which the pydantic models run when the
operator reads a spec. The regular expressions both sides use are generated
here from the same constants, so a placeholder added to ``PLACEHOLDERS``
changes the CRD (``make manifests``) and the Python check together.

CEL here may use only what Kubernetes 1.29 offers (the chart's
``kubeVersion``): the regex, list and strings libraries and ``duration()``;
no two-variable comprehensions (1.32), no ``format`` (1.31), no ``ext.Lists``
(1.34). Regular expressions are written in the common subset of RE2 and
Python's ``re``, except for the whitespace class, which each side spells its
own way (``re`` ``\\s`` is Unicode; RE2 ``\\s`` is ASCII only).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

# ------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One rule: the CEL the API server runs and the same check in Python.

    ``check`` gets what CEL calls ``self``: the model instance for a rule on a
    model, the value for a rule on a field. ``explain`` is the Python twin of
    ``message_expression`` (a message naming the offending value).
    ``cel=None`` marks a rule the schema already enforces on the API server
    (a list-type map's unique keys) that Python must check itself.
    """

    cel: str | None
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    message_expression: str | None = None
    explain: Callable[[Any], str] | None = None

    def entry(self) -> dict[str, Any]:
        """The ``x-kubernetes-validations`` entry."""
        assert self.cel is not None
        entry: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            entry["messageExpression"] = self.message_expression
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry

    def violation(self, value: Any) -> str | None:
        """None when ``value`` satisfies the rule, else the API server's message for it."""
        if self.check(value):
            return None
        if self.explain is not None:
            text = self.explain(value)
            # The API server falls back to ``message`` for a message expression
            # with a line break (or an empty or huge one); so does Python.
            if text.strip() and "\n" not in text and len(text) <= 5000:
                return text
        return self.message


def schema_entries(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    return [r.entry() for r in rules if r.cel is not None]


@dataclass(frozen=True)
class Checked:
    """``Annotated`` metadata putting rules on a field's own schema (``self`` is the value)."""

    rules: tuple[Rule, ...]

    def __init__(self, *rules: Rule) -> None:
        object.__setattr__(self, "rules", rules)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        def check(value: Any) -> Any:
            for rule in self.rules:
                if (message := rule.violation(value)) is not None:
                    raise ValueError(message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        target = handler.resolve_ref_schema(out)
        target.setdefault("x-kubernetes-validations", []).extend(schema_entries(self.rules))
        return out


@functools.lru_cache(maxsize=64)
def _python_regex(pattern: str) -> re.Pattern[str]:
    # RE2's "$" (no multi-line flag) is the end of the text; Python's also matches before a final newline.
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def matches(text: str, pattern: str) -> bool:
    """CEL's ``text.matches(pattern)`` in Python: an unanchored search, ``$`` at the very end."""
    return _python_regex(pattern).search(text) is not None


def cel_string(text: str) -> str:
    """``text`` as a CEL single-quoted string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ------------------------------------------------------------ regular expressions

# What Python's ``\s`` matches in a str pattern: Unicode whitespace, none above U+3000.
_PY_SPACE: Final = re.compile(r"\s")
WHITESPACE: Final = frozenset(c for c in map(chr, range(0x3001)) if _PY_SPACE.match(c))
# Unicode's separators (category Z) are all whitespace to Python; RE2 calls them \\pZ.
_SEPARATORS: Final = frozenset(c for c in map(chr, range(0x3001)) if unicodedata.category(c).startswith("Z"))


def _ranges(chars: Iterable[str]) -> list[tuple[int, int]]:
    points = sorted({ord(c) for c in chars})
    out: list[tuple[int, int]] = []
    for p in points:
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def _re2_space() -> str:
    """Python's ``\\s`` as a RE2 class: the control characters spelled ``\\xHH``, then ``\\pZ``."""
    assert _SEPARATORS <= WHITESPACE
    rest = WHITESPACE - _SEPARATORS
    assert all(ord(c) < 0x100 for c in rest)
    return "[" + "".join(f"\\x{a:02x}" + (f"-\\x{b:02x}" if b > a else "") for a, b in _ranges(rest)) + "\\pZ]"


def _letters_class(chars: Iterable[str]) -> str:
    """A class of letters and ``_``, the same text in RE2 and Python."""
    parts = []
    for a, b in _ranges(chars):
        parts.append(chr(a) if a == b else chr(a) + chr(b) if b == a + 1 else f"{chr(a)}-{chr(b)}")
    return "[" + "".join(parts) + "]"


# Placeholders of gate queries (``inferstack.core.promql`` substitutes them).
PLACEHOLDERS: Final = ("stack", "namespace", "revision", "baseline", "slice", "window")
NAME_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
NAME: Final = _letters_class(NAME_CHARS)  # [A-Z_a-z]
# The placeholder syntax, exactly as promql.py reads it: ``{{ name }}``, spaces optional.
PLACEHOLDER_PATTERN: Final = r"\{\{\s*([A-Za-z_]+)\s*\}\}"
PLACEHOLDER_RE: Final = re.compile(PLACEHOLDER_PATTERN)


def _not_one_of(words: Iterable[str]) -> str:
    """A regex (no anchors) for the non-empty strings of NAME_CHARS that are none of ``words``.

    Walks the trie of ``words``: at each node, the string may stop there (if
    the node is not a word), go on along a child, or leave the trie with any
    other character followed by anything.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for c in word:
            node = node.setdefault(c, {})
        node[""] = {}

    def alternatives(node: dict[str, Any], root: bool) -> str:
        branches = [] if root or "" in node else [""]
        children = sorted(c for c in node if c)
        branches += [f"{c}(?:{alternatives(node[c], False)})" for c in children]
        others = [c for c in NAME_CHARS if c not in children]
        branches.append(NAME + "+" if len(others) == len(NAME_CHARS) else _letters_class(others) + NAME + "*")
        return "|".join(branches)

    return alternatives(trie, True)


@dataclass(frozen=True)
class Placeholders:
    """Regexes over gate templates in one dialect; ``space`` is the dialect's Python-``\\s``."""

    space: str

    def placeholder(self, name: str) -> str:
        """``{{ name }}``; ``name`` is a regex."""
        return rf"\{{\{{{self.space}*(?:{name}){self.space}*\}}\}}"

    @property
    def any(self) -> str:
        return self.placeholder(NAME + "+")

    @property
    def known(self) -> str:
        return self.placeholder("|".join(PLACEHOLDERS))

    @property
    def unknown(self) -> str:
        return self.placeholder(_not_one_of(PLACEHOLDERS))

    @property
    def revision(self) -> str:
        return self.placeholder("revision")

    @property
    def slice(self) -> str:
        return self.placeholder("slice")

    @property
    def slice_not_regex(self) -> str:
        """``{{slice}}`` opening a string compared with ``=`` or ``!=`` (not ``=~``): PromQL's own spaces."""
        return r"=[ \t\n\r]*[" + "\"'`" + "]" + self.slice


RE2: Final = Placeholders(_re2_space())
PY: Final = Placeholders(r"\s")
KNOWN_LIST: Final = ", ".join("{{" + p + "}}" for p in PLACEHOLDERS)


def unknown_placeholders(template: str) -> list[str]:
    """The placeholders promql.py would refuse, as written (``{{ stak }}``), in order."""
    return [m.group(0) for m in PLACEHOLDER_RE.finditer(template) if m.group(1) not in PLACEHOLDERS]
