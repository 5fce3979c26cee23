"""The pure part of retrieval: the query, the system message, the bounded header."""

from __future__ import annotations

import pytest

from inferstack.core.prompttemplates import Template
from inferstack.core.retrieval import (
    DEFAULT_SYSTEM_TEMPLATE,
    MAX_HEADER_CHARS,
    MAX_HEADER_ID_CHARS,
    MAX_QUERY_CHARS,
    Document,
    build_query,
    retrieved_header,
    system_message,
)

USER, ASSISTANT = "user", "assistant"


def msg(role: str, content) -> dict:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    "messages,template,expected",
    [
        ([msg(USER, "first"), msg(ASSISTANT, "ok"), msg(USER, " refund policy? ")], None, "refund policy?"),
        ([msg(USER, [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}])], None, "a\nb"),
        ([msg("system", "s"), msg(ASSISTANT, "hello")], None, ""),  # no user text: nothing to search for
        ([msg(USER, "one"), msg(USER, "two")], "{{ messages | selectattr('role', 'eq', 'user') | map(attribute='content') | join(' ') }}", "one two"),
        ([msg(USER, "x" * (MAX_QUERY_CHARS + 10))], None, "x" * MAX_QUERY_CHARS),
    ],
)
def test_the_query_is_the_last_user_message_or_the_query_template(messages, template, expected) -> None:
    assert build_query(messages, Template("queryTemplate", template) if template else None) == expected


DOCS = [Document("kb-1", "Refunds take 5 days.", 0.9, {"title": "Refunds"}), Document("kb-7", "Shipping is free.", 0.4)]


def test_the_default_system_message_appends_the_documents_with_their_ids() -> None:
    out = system_message(Template("system", DEFAULT_SYSTEM_TEMPLATE), "Be brief.", DOCS, [], [])
    assert out == "Be brief.\n\nRetrieved documents:\n[kb-1] Refunds take 5 days.\n[kb-7] Shipping is free."
    assert system_message(Template("system", DEFAULT_SYSTEM_TEMPLATE), "Be brief.", [], [], []) == "Be brief."


def test_a_template_sees_documents_messages_and_tools() -> None:
    t = Template("system", "{{ system }}|{% for d in documents %}{{ d.metadata.title or d.id }}:{{ '%.1f' % d.score }};{% endfor %}"
                           "|{{ messages[-1].content }}|{{ tools[0].function.name }}")
    tools = [{"type": "function", "function": {"name": "lookup_order"}}]
    assert system_message(t, None, DOCS, [msg(USER, "q")], tools) == "|Refunds:0.9;kb-7:0.4;|q|lookup_order"


@pytest.mark.parametrize(
    "ids,top_k,expected",
    [
        (["kb-1", "kb-7"], 5, "kb-1,kb-7"),
        (["a", "b", "c"], 2, "a,b"),  # never more than topK
        (["x,y", "line\r\nInjected: 1", "é"], 5, "x%2Cy,line%0D%0AInjected:%201,%C3%A9"),  # no comma, no header injection
        ([], 5, ""),
    ],
)
def test_the_retrieved_header_is_escaped_and_bounded(ids, top_k, expected) -> None:
    assert retrieved_header(ids, top_k) == expected


def test_the_retrieved_header_caps_each_id_and_the_whole_at_whole_ids() -> None:
    header = retrieved_header(["i" * 1000] * 100, 100)
    parts = header.split(",")
    assert all(len(p) == MAX_HEADER_ID_CHARS for p in parts)
    assert len(header) <= MAX_HEADER_CHARS and len(parts) == (MAX_HEADER_CHARS + 1) // (MAX_HEADER_ID_CHARS + 1)
