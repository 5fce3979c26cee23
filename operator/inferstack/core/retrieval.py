"""Retrieval-augmented prompts, the pure part: the store interface, the query, the system message, the header.

The router (``inferstack.router.retrieval``) does the I/O: it embeds what
:func:`build_query` returns, searches a :class:`VectorStore`, and sends what
:func:`system_message` renders. Everything here is a function of its inputs.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferstack.core.prompttemplates import Template

MAX_QUERY_CHARS = 8192  # what is embedded; embedding models take a few hundred tokens anyway
MAX_HEADER_ID_CHARS = 128  # one id in x-inferstack-retrieved, after escaping
MAX_HEADER_CHARS = 2048  # the whole header: proxies refuse long ones

# The system message when the revision declares no prompt.templates.system:
# its system prompt, then the documents, each with its id so an answer can cite it.
DEFAULT_SYSTEM_TEMPLATE = (
    "{{ system }}"
    "{% if documents %}\n\nRetrieved documents:"
    "{% for d in documents %}\n[{{ d.id }}] {{ d.text }}{% endfor %}{% endif %}"
)


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    score: float  # cosine similarity: 1 is the same direction
    metadata: dict[str, Any] = field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata}


class VectorStore(Protocol):
    """One backend (pgvector today). ``version`` is the pinned index version: never "latest"."""

    async def search(self, index: str, version: str, vector: Sequence[float], k: int) -> list[Document]: ...


def message_text(message: Any) -> str:
    """A chat message's text: its string content, or its text parts joined (images and audio have none)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def build_query(messages: Sequence[Any], template: Template | None) -> str:
    """What is embedded: the last user message, or the revision's queryTemplate over ``messages``.

    Empty means there is nothing to search for (no user text): no retrieval.
    """
    if template is not None:
        query = template.render({"messages": list(messages)}, max_chars=MAX_QUERY_CHARS)
    else:
        query = next((message_text(m) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
    return query.strip()[:MAX_QUERY_CHARS]


def system_message(
    template: Template, system: str | None, documents: Sequence[Document], messages: Sequence[Any], tools: Sequence[Any]
) -> str:
    """The system message the model receives, rendered from the revision's template."""
    return template.render({
        "system": system or "",
        "documents": [d.variables() for d in documents],
        "messages": list(messages),
        "tools": list(tools),
    })


def retrieved_header(ids: Sequence[str], top_k: int) -> str:
    """``x-inferstack-retrieved``: the ids, comma-separated, percent-escaped and bounded.

    Ids come from the store, so they are escaped to header-safe characters
    (no comma, no control character), each cut at ``MAX_HEADER_ID_CHARS``, at
    most ``top_k`` of them, and no more than fit in ``MAX_HEADER_CHARS``:
    a whole id or none, never half of one.
    """
    out: list[str] = []
    size = 0
    for raw in ids[:top_k]:
        escaped = urllib.parse.quote(raw, safe="-._~:/@")[:MAX_HEADER_ID_CHARS]
        size += len(escaped) + (1 if out else 0)
        if size > MAX_HEADER_CHARS:
            break
        out.append(escaped)
    return ",".join(out)
