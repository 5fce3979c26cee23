"""LLM judges: which answers are judged, what the judge is asked, and how its reply is read.

Pure: the router (``router/judge.py``) sends these prompts and records the
samples; the judge stand-in (``standin/judge.py``) reads the same prompts.

Two modes, after MT-Bench (Zheng et al., "Judging LLM-as-a-Judge with
MT-Bench and Chatbot Arena", NeurIPS 2023, its ``single-v1`` and
``pair-v2`` prompts):

* **Rubric**: one answer, the stack's criteria, a rating 1..10 written as
  ``[[7]]``; the sample is ``(rating - 1) / 9`` in 0..1.
* **Pairwise**: the stable answer and the candidate's shadow answer to the
  same request; the verdict is ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). Judges
  prefer the first position (MT-Bench measured it), so every pair is asked in
  both orders and only a verdict that survives the swap counts: a win in
  both is +1, a loss in both -1, anything else 0 (a tie).

A reply with no verdict in the required form is a judge *error*, never a
score: a judge that cannot follow its format must not move a gate.

An answer of a revision that retrieves is judged with the documents it was
given (``documents_text``: ids and texts, bounded), in a "Retrieved
Documents" section before the answer; in a pair, each answer with its own
revision's documents. A judge can then tell a grounded answer from one that
ignores or contradicts its sources (its criteria say how much that matters).
Without documents the prompt has no such section.

Which requests are judged is decided by the request id alone
(``sampled``), so every router replica judges the same requests and a
retried request is judged at most once per replica.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from inferstack.api.v1alpha1 import JudgeMode, LLMJudge
from inferstack.core.retrieval import Document

# Part of the judge's identity: a new wording is a new judge. v2: retrieved documents are shown.
PROMPT_VERSION: Final = "inferstack-judge-v2"
MAX_ANSWER_CHARS: Final = 8192  # what the router keeps of an answer (evaluators.MAX_CHECKED_CHARS)
MAX_CONVERSATION_CHARS: Final = 8192  # the newest part of the client's conversation shown to the judge
MAX_DOCUMENT_CHARS: Final = 2048  # of each retrieved document's text shown to the judge
MAX_DOCUMENT_ID_CHARS: Final = 256
MAX_DOCUMENTS_CHARS: Final = 12288  # of all an answer's documents: the nearest first, whole entries only

RUBRIC_SYSTEM: Final = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the conversation displayed below, by the criteria given. Be as objective as possible. Begin your "
    "evaluation with a short explanation. After it, you must rate the response on a scale of 1 to 10 by "
    'strictly following this format: "[[rating]]", for example: "Rating: [[5]]".'
)
PAIRWISE_SYSTEM: Final = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the conversation displayed below, by the criteria given. Avoid any position bias: the "
    "order in which the responses are presented must not influence your decision, nor their length, nor "
    "the assistants' names. Begin your evaluation with a short explanation. After it, output your final "
    'verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B '
    'is better, and "[[C]]" for a tie.'
)
# With retrieved documents: the same instructions and one sentence saying what the documents are.
RUBRIC_SYSTEM_WITH_DOCUMENTS: Final = RUBRIC_SYSTEM.replace(
    " Begin your evaluation",
    " The assistant was given the retrieved documents displayed below as context for its response."
    " Begin your evaluation",
)
PAIRWISE_SYSTEM_WITH_DOCUMENTS: Final = PAIRWISE_SYSTEM.replace(
    " Begin your evaluation",
    " Each assistant was given its own retrieved documents as context for its response; they are displayed"
    " before its answer. Begin your evaluation",
)

# The markers that frame each part of a judge prompt; the stand-in reads them back.
CRITERIA, CONVERSATION, ANSWER, ANSWER_A, ANSWER_B = (
    "Criteria",
    "Conversation",
    "Answer",
    "Assistant A's Answer",
    "Assistant B's Answer",
)
DOCUMENTS, DOCUMENTS_A, DOCUMENTS_B = (
    "Retrieved Documents",
    "Assistant A's Retrieved Documents",
    "Assistant B's Retrieved Documents",
)
NO_DOCUMENTS: Final = "(no documents were retrieved for this assistant)"
_RATING: Final = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_CHOICE: Final = re.compile(r"\[\[\s*([ABC])\s*\]\]")

Choice = Literal["A", "B", "C"]


class JudgeReplyError(ValueError):
    """The judge answered, but not with a verdict in the required form."""


def section(name: str, text: str) -> str:
    return f"[The Start of {name}]\n{text}\n[The End of {name}]"


def read_section(prompt: str, name: str) -> str | None:
    """The text between a section's markers, or None: how the stand-in (and a test) reads a prompt."""
    start, end = f"[The Start of {name}]\n", f"\n[The End of {name}]"
    i = prompt.find(start)
    if i < 0:
        return None
    j = prompt.find(end, i + len(start))
    return prompt[i + len(start) : j] if j >= 0 else None


# ----------------------------------------------------------------- sampling


def sample_point(request_id: str, evaluator: str) -> float:
    """A uniform number in [0, 1) fixed by the request id and the evaluator's name."""
    h = hashlib.sha256(f"{evaluator}\0{request_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def sampled(request_id: str, evaluator: str, rate: float) -> bool:
    """Whether this request is judged: the same answer on every replica, for every retry."""
    return rate >= 1.0 or sample_point(request_id, evaluator) < rate


# ------------------------------------------------------------------ prompts


def conversation(body: Mapping[str, Any]) -> str:
    """The client's request as the judge sees it: its messages (not the stack's system prompt), newest kept."""
    messages = body.get("messages")
    if isinstance(messages, list):
        lines = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role") if isinstance(m.get("role"), str) else "user"
            lines.append(f"{role}: {_content_text(m.get('content'))}")
        text = "\n".join(lines)
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return text[-MAX_CONVERSATION_CHARS:]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def documents_text(documents: Sequence[Document]) -> str:
    """The documents an answer was given, as the judge sees them: ``[id] text`` entries, nearest first, bounded.

    Each text is cut at ``MAX_DOCUMENT_CHARS`` (each id at
    ``MAX_DOCUMENT_ID_CHARS``); entries are added while the whole stays within
    ``MAX_DOCUMENTS_CHARS``, and a last line counts the ones left out. ""
    when there are none: the prompt then has no documents section.
    """
    entries: list[str] = []
    size = 0
    for d in documents:
        text = d.text if len(d.text) <= MAX_DOCUMENT_CHARS else d.text[:MAX_DOCUMENT_CHARS] + " [...]"
        entry = f"[{d.id[:MAX_DOCUMENT_ID_CHARS]}] {text}"
        if size + len(entry) + 2 > MAX_DOCUMENTS_CHARS - 64:  # room for the line counting the rest
            break
        entries.append(entry)
        size += len(entry) + 2
    if len(entries) < len(documents):
        entries.append(f"({len(documents) - len(entries)} more retrieved documents not shown)")
    return "\n\n".join(entries)


def rubric_messages(criteria: str, body: Mapping[str, Any], answer: str, documents: str = "") -> list[dict[str, str]]:
    """A rubric judge's prompt; ``documents`` (:func:`documents_text`) are what the answer was given."""
    parts = [section(CRITERIA, criteria), section(CONVERSATION, conversation(body))]
    if documents:
        parts.append(section(DOCUMENTS, documents[:MAX_DOCUMENTS_CHARS]))
    parts.append(section(ANSWER, answer[:MAX_ANSWER_CHARS]))
    system = RUBRIC_SYSTEM_WITH_DOCUMENTS if documents else RUBRIC_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def pairwise_messages(
    criteria: str, body: Mapping[str, Any], answer_a: str, answer_b: str, documents_a: str = "", documents_b: str = ""
) -> list[dict[str, str]]:
    """A pairwise judge's prompt; each answer is shown after its own revision's documents.

    When either side has documents both sides get the section (``NO_DOCUMENTS``
    for one that had none), so swapping the answers swaps everything about them.
    """
    with_documents = bool(documents_a or documents_b)
    parts = [section(CRITERIA, criteria), section(CONVERSATION, conversation(body))]
    for name, documents, answer_name, answer in ((DOCUMENTS_A, documents_a, ANSWER_A, answer_a),
                                                 (DOCUMENTS_B, documents_b, ANSWER_B, answer_b)):
        if with_documents:
            parts.append(section(name, documents[:MAX_DOCUMENTS_CHARS] or NO_DOCUMENTS))
        parts.append(section(answer_name, answer[:MAX_ANSWER_CHARS]))
    system = PAIRWISE_SYSTEM_WITH_DOCUMENTS if with_documents else PAIRWISE_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def request_body(model: str, messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """A judge call: deterministic (temperature 0), short, never streamed."""
    return {"model": model, "messages": list(messages), "temperature": 0, "max_tokens": 512, "stream": False}


# ------------------------------------------------------------------ replies


def reply_text(response: Any) -> str:
    """The judge's text from an OpenAI chat completion; a malformed response is a judge error."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise JudgeReplyError("the judge's response has no choices[0].message.content") from exc
    if not isinstance(content, str):
        raise JudgeReplyError("the judge's message content is not text")
    return content


def parse_rating(text: str) -> float:
    """The sample of a rubric reply: ``(rating - 1) / 9``; the last ``[[n]]`` counts (the verdict comes last)."""
    found = _RATING.findall(text)
    if not found:
        raise JudgeReplyError("no [[rating]] in the judge's reply")
    rating = float(found[-1])
    if not 1 <= rating <= 10:
        raise JudgeReplyError(f"rating {rating:g} is outside 1..10")
    return (rating - 1) / 9


def parse_choice(text: str) -> Choice:
    found = _CHOICE.findall(text)
    if not found:
        raise JudgeReplyError("no [[A]], [[B]] or [[C]] in the judge's reply")
    choice: Choice = found[-1]
    return choice


def pair_outcome(stable_first: Choice, candidate_first: Choice) -> float:
    """The candidate's outcome from both orders: +1 win, -1 loss, 0 tie or disagreement.

    ``stable_first``: the verdict with the stable answer as A (candidate B);
    ``candidate_first``: with the candidate as A.
    """
    wins = (stable_first == "B") + (candidate_first == "A")
    losses = (stable_first == "A") + (candidate_first == "B")
    if wins == 2:
        return 1.0
    if losses == 2:
        return -1.0
    return 0.0


# ----------------------------------------------------------------- identity


@dataclass(frozen=True)
class JudgeTarget:
    """Where a judge's calls go: a hosted endpoint, or a stack served by this router."""

    url: str | None
    model: str | None
    stack: str | None


def target(judge: LLMJudge) -> JudgeTarget:
    if judge.endpoint is not None:
        return JudgeTarget(judge.endpoint.url.rstrip("/").removesuffix("/v1"), judge.endpoint.model, None)
    return JudgeTarget(None, None, judge.stack)


def identity(judge: LLMJudge) -> str:
    """What reproduces a verdict: the prompt wording, mode, judge model and criteria, hashed (12 hex).

    The sample rate and budget are not part of it: they change how many
    verdicts there are, not what one verdict is.
    """
    t = target(judge)
    parts = {
        "prompt": PROMPT_VERSION,
        "mode": judge.mode.value,
        "url": t.url,
        "model": t.model,
        "stack": t.stack,
        "criteria": judge.criteria,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def describe(judge: LLMJudge) -> str:
    """``Pairwise judge gpt-4o at https://api.example.com (criteria 3f2a9c...)``: for status and events."""
    t = target(judge)
    where = f"{t.model} at {t.url}" if t.url else f"stack {t.stack}"
    mode = "pairwise" if judge.mode == JudgeMode.PAIRWISE else "rubric"
    return f"{mode} judge {where}, identity {identity(judge)}"
