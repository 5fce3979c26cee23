"""The stand-in's answer table: questions per slice, and prompt rules that spoil one slice.

Answers depend on the system prompt through :data:`PROMPT_RULES`, so a rollout
of a bad prompt gives measurably worse answers on one slice only, which is
what per-slice gates must catch while the other slices look healthy.

A rule either makes its slice refuse (every rule check sees that) or answer
*fluently wrong*: the fixture's ``wrong`` answer, same style and length as the
right one, no refusal words, so every rule check passes and only a judge that
knows the right answer (``standin/judge.py``) can tell.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

REFUSAL: Final = "I'm sorry, but I can't help with that."


@dataclass(frozen=True)
class Fixture:
    slice: str
    question: str
    answer: str
    wrong: str = ""  # a confident, fluent, wrong answer (a fluent-wrong rule's answer); "" for none


@dataclass(frozen=True)
class PromptRule:
    """When ``phrase`` occurs in the system prompt, questions of ``slice`` get ``answer``.

    ``fluent_wrong``: they get the fixture's ``wrong`` answer instead, which no rule check can tell.
    """

    phrase: str
    slice: str
    answer: str = REFUSAL
    fluent_wrong: bool = False


FIXTURES: Final[tuple[Fixture, ...]] = (
    Fixture(
        "billing", "How do I get a refund?",
        "Open Orders, pick the order and press Request refund; it takes 5 days.",
        "Open Orders, pick the order and press Request refund; it takes 90 days.",
    ),
    Fixture(
        "billing", "Why was I charged twice?",
        "The second charge is a card authorisation hold; it disappears within 3 days.",
        "The second charge is a yearly membership fee; it renews every 12 months.",
    ),
    Fixture(
        "billing", "Can I change my payment method?",
        "Yes: Settings, Billing, Payment methods, Add card, then make it the default.",
        "No: the first card stays on the account; our support team swaps it by post.",
    ),
    Fixture("shipping", "Where is my parcel?", "Open Orders and press Track; the carrier updates the status every 4 hours."),
    Fixture("shipping", "Do you ship to Canada?", "Yes, we ship to Canada in 5 to 8 working days."),
    Fixture("shipping", "Can I change the delivery address?", "Yes, until the parcel leaves the warehouse: Orders, Edit address."),
    Fixture("general", "What are your opening hours?", "Support answers every day from 8:00 to 20:00 CET."),
    Fixture("general", "How do I reset my password?", "Press Forgot password on the sign-in page and follow the e-mail link."),
    Fixture("general", "Who are you?", "I am the support assistant of Example Shop."),
)

PROMPT_RULES: Final[tuple[PromptRule, ...]] = (
    PromptRule("never discuss refunds", "billing"),
    PromptRule("never discuss payments", "billing"),
    PromptRule("never discuss deliveries", "shipping"),
    PromptRule("quote the 2019 refund policy", "billing", fluent_wrong=True),
)

FALLBACK_SLICE: Final = "general"


def normalise(text: str) -> str:
    """Lower case, letters, digits and single spaces: how questions (and, for the judge, answers) are matched."""
    return " ".join(re.sub(r"[^a-z0-9\s]", "", text.lower()).split())


_BY_QUESTION: Final = {normalise(f.question): f for f in FIXTURES}


def content_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A chat request's messages, or None for a completions request; like vLLM, odd extra fields are ignored."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    return [m for m in messages if isinstance(m, dict)]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return " ".join(map(str, prompt)) if isinstance(prompt, list) else ""


def find_fixture(question: str) -> Fixture | None:
    return _BY_QUESTION.get(normalise(question))


def answer(system_prompt: str, question: str) -> str:
    """The deterministic answer for a question under a system prompt."""
    fixture = find_fixture(question)
    slice_ = fixture.slice if fixture else FALLBACK_SLICE
    lowered = system_prompt.lower()
    for rule in PROMPT_RULES:
        if rule.slice == slice_ and rule.phrase in lowered:
            if rule.fluent_wrong:
                if fixture and fixture.wrong:
                    return fixture.wrong
                continue  # nothing fluent and wrong to say: the right answer
            return rule.answer
    if fixture:
        return fixture.answer
    return f"I have no stored answer for: {question.strip()[:200]}"


def answer_request(body: dict[str, Any]) -> str:
    """Answer a chat or completions request body; JSON mode wraps the answer in an object."""
    messages = _messages(body)
    if messages is not None:
        system = "\n".join(content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
        users = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        text = answer(system, users[-1] if users else "")
    else:
        text = answer("", _prompt_text(body.get("prompt")))
    fmt = body.get("response_format") or {}
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return json.dumps({"answer": text})
    return text


def count_tokens(text: str) -> int:
    """A rough, deterministic token count: words and punctuation runs."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def prompt_tokens(body: dict[str, Any]) -> int:
    messages = _messages(body)
    if messages is not None:
        return sum(count_tokens(content_text(m.get("content"))) + 4 for m in messages)
    return count_tokens(_prompt_text(body.get("prompt")))


def split_tokens(text: str) -> list[str]:
    """Pieces to stream; joined they give back ``text`` exactly."""
    return re.findall(r"\S+\s*|\s+", text) or [""]
