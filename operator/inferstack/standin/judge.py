"""The judge stand-in's verdicts: MT-Bench-style judge prompts answered from the fixture table.

``inferstack-standin --judge`` serves these from the same HTTP app as the
model stand-in (``app.py``). It reads the prompt ``core/judging.py`` builds,
finds the client's question in its Conversation section and judges each
answer by the fixture's right answer (``fixtures.find_fixture``):

* the fixture's answer (normalised) is **right**: rubric ``[[9]]``;
* any other answer to a fixture question is **wrong**: ``[[2]]`` (this is
  how it sees a fluent-wrong answer that every rule check passes);
* an answer to a question not in the table is **neutral**: ``[[6]]``.

Pairwise, the better answer's letter wins; two answers of equal quality are
a tie ``[[C]]``, or ``[[A]]`` with ``position_bias`` (the first-position
preference MT-Bench measured), which the router's position swap must turn
back into a tie.

Retrieved-documents sections (a groundedness prompt) are read past: the
verdict depends on the question and the answer only, so a judged revision
that retrieves gets the same verdicts as one that does not.

The reply never quotes the prompt: no criteria, question, document or answer text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from inferstack.core.judging import ANSWER, ANSWER_A, ANSWER_B, CONVERSATION, CRITERIA, read_section
from inferstack.standin import fixtures


class NotAJudgePrompt(ValueError):
    """The request is not a judge prompt: the server answers HTTP 400."""


class Quality(IntEnum):
    WRONG = 0
    NEUTRAL = 1
    RIGHT = 2


RATING = {Quality.RIGHT: 9, Quality.WRONG: 2, Quality.NEUTRAL: 6}
_WHY = {
    Quality.RIGHT: "The response gives the reference answer to the user's question.",
    Quality.WRONG: "The response is fluent but contradicts the reference answer to the user's question.",
    Quality.NEUTRAL: "There is no reference answer for this question; the response is plausible.",
}
_ROLES = ("system", "developer", "user", "assistant", "tool")


def prompt_text(body: Mapping[str, Any]) -> str:
    """All the text the judge was sent: its messages' contents, or a completions prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n\n".join(fixtures.content_text(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def question(conversation: str) -> str:
    """The client's last user message in a Conversation section (``role: text`` lines), or all of it."""
    found: list[str] | None = None
    current: list[str] | None = None
    for line in conversation.split("\n"):
        role, sep, rest = line.partition(": ")
        if sep and role in _ROLES:
            current = [rest] if role == "user" else None
            if current is not None:
                found = current
        elif current is not None:
            current.append(line)
    return "\n".join(found) if found is not None else conversation


def _answer_text(answer: str) -> str:
    """JSON mode's ``{"answer": ...}`` is judged by the answer inside it."""
    try:
        value = json.loads(answer)
    except ValueError:
        return answer
    return value["answer"] if isinstance(value, dict) and isinstance(value.get("answer"), str) else answer


def quality(fixture: fixtures.Fixture | None, answer: str) -> Quality:
    if fixture is None:
        return Quality.NEUTRAL
    right = fixtures.normalise(_answer_text(answer)) == fixtures.normalise(fixture.answer)
    return Quality.RIGHT if right else Quality.WRONG


def verdict(body: Mapping[str, Any], *, position_bias: bool = False) -> str:
    """The judge's reply to a rubric or pairwise prompt; :class:`NotAJudgePrompt` for anything else."""
    text = prompt_text(body)
    if read_section(text, CRITERIA) is None:
        raise NotAJudgePrompt("not a judge prompt: it has no Criteria section")
    conversation = read_section(text, CONVERSATION)
    if conversation is None:
        raise NotAJudgePrompt("not a judge prompt: it has no Conversation section")
    fixture = fixtures.find_fixture(question(conversation))
    answer_a, answer_b = read_section(text, ANSWER_A), read_section(text, ANSWER_B)
    if answer_a is not None and answer_b is not None:
        qa, qb = quality(fixture, answer_a), quality(fixture, answer_b)
        if qa != qb:
            better = "A" if qa > qb else "B"
            return f"Assistant A: {_WHY[qa]} Assistant B: {_WHY[qb]} Assistant {better} is better. [[{better}]]"
        if position_bias:
            return f"Both responses: {_WHY[qa]} Assistant A, presented first, reads slightly better. [[A]]"
        return f"Both responses: {_WHY[qa]} They are equally good. [[C]]"
    answer = read_section(text, ANSWER)
    if answer is None:
        raise NotAJudgePrompt("not a judge prompt: it has no Answer section, nor both Assistant A's and B's")
    q = quality(fixture, answer)
    return f"{_WHY[q]} Rating: [[{RATING[q]}]]"
