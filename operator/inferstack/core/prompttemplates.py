"""Prompt templates (``spec.prompt.templates``, ``retriever.queryTemplate``): Jinja2 in a sandbox, bounded.

Templates are written by the stack's owner, but what they render is what
clients sent (messages) and what the store returned (documents), so
rendering must stay inside fixed bounds whatever those hold:

* the immutable sandbox: no attribute access to Python internals, no
  mutation of the variables, ``range`` capped by Jinja2 itself;
* what could allocate without bound is checked before it runs: ``*``,
  ``**`` and ``%``, and every call or filter given a huge count or a format
  with a huge width (``'x' * 10**9``, ``'a'.center(10**10)``,
  ``'%999999999d' % 1``): an error, not a gigabyte or a hung event loop (the
  router is shared by every stack);
* the output is generated piece by piece and cut off past ``max_chars``.

Every failure is a :class:`TemplateError` with a one-line message (the line
number and Jinja2's reason), never a traceback: the router answers with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_RENDERED_CHARS = 262_144  # the longest system prompt the spec accepts (spec.prompt.system)
_MAX_REPEAT = 65_536  # longest result of str * n, list * n
_MAX_EXPONENT = 64


class TemplateError(ValueError):
    """A template that does not compile or render; the message is safe to show a client."""


_HUGE_WIDTH = re.compile(r"\d{6,}")  # a width or precision in a format string of a million or more


def _check_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > _MAX_REPEAT:
            raise SecurityError(f"a count or width above {_MAX_REPEAT} is not allowed")
        if isinstance(value, str) and _HUGE_WIDTH.search(value) and ("%" in value or "{" in value):
            raise SecurityError("a format width above 99999 is not allowed")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > _MAX_REPEAT:
                    raise SecurityError(f"a repetition longer than {_MAX_REPEAT} is not allowed")
        if operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"an exponent above {_MAX_EXPONENT} is not allowed")
        if operator == "%" and isinstance(left, str):
            _check_args((left, *(right if isinstance(right, tuple) else (right,))), {})
        return super().call_binop(context, operator, left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja2 returns an undefined that prints as "": say it instead, so the author sees it.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is unsafe")

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_args((value.__self__,), {})  # str.format's own string: "{:>999999999}"
        return wrapped


def _bounded(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_args(args[1:], kwargs)  # the first is the value filtered: its size is the input's
        return f(*args, **kwargs)

    return checked


_ENV = _BoundedEnvironment(autoescape=False, keep_trailing_newline=True)
# Filters are called directly, not through call(): bound the ones that take a count or a format.
for _name in ("center", "indent", "wordwrap", "format", "batch", "slice", "truncate"):
    _ENV.filters[_name] = _bounded(_ENV.filters[_name])


class Template:
    """One compiled template; compile once per plan, render per request."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {name} does not compile: line {exc.lineno}: {exc.message}") from None

    def render(self, variables: Mapping[str, Any], max_chars: int = MAX_RENDERED_CHARS) -> str:
        pieces: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(**variables):
                size += len(piece)
                if size > max_chars:
                    raise TemplateError(f"template {self.name} renders more than {max_chars} characters")
                pieces.append(piece)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"template {self.name} is not allowed to do that: {exc}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.name} failed: {exc.message or type(exc).__name__}") from None
        except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
            # A template that divides by zero or indexes past a list's end, on some request's data.
            raise TemplateError(f"template {self.name} failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        return "".join(pieces)
