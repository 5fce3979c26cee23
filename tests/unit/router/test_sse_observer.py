"""The stream observer and the usage request: SSE framing across chunk boundaries, usage from the
final chunk, the usage chunk stripped for clients that did not ask for it, JSON that orjson refuses."""

import itertools
import json

import pytest

from inferstack.router import proxy


def event(choices: list, **extra: object) -> bytes:
    return b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": choices, **extra}).encode() + b"\n\n"


def delta(text: str, index: int = 0) -> dict:
    return {"index": index, "delta": {"content": text}, "finish_reason": None}


USAGE = event([], usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
STREAM = b"".join([event([delta("Hello")]), event([delta(", wor")]), event([delta("ld")]),
                   event([{"index": 0, "delta": {}, "finish_reason": "stop"}]), USAGE, b"data: [DONE]\n\n"])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def observe(chunks: list[bytes], *, strip: bool) -> tuple[bytes, proxy.Answer]:
    observer = proxy.SSEObserver(strip_usage=strip)
    passed = b"".join(observer.feed(c) for c in chunks) + observer.flush()
    return passed, observer.finish()


@pytest.mark.parametrize("cuts", [[], [1], [5], [len(STREAM) - 1], list(range(1, len(STREAM)))], ids=["whole", "1", "5", "last", "bytewise"])
def test_framing_across_chunk_boundaries(cuts: list[int]) -> None:
    for strip in (False, True):
        passed, answer = observe(split_at(STREAM, cuts), strip=strip)
        assert answer.text == "Hello, world"
        assert (answer.prompt_tokens, answer.completion_tokens) == (7, 3)  # from the final chunk
        assert passed == (STREAM.replace(USAGE, b"") if strip else STREAM)


def test_every_cut_of_a_stream_gives_the_same_answer_and_bytes() -> None:
    stripped = STREAM.replace(USAGE, b"")
    for cut in range(1, len(STREAM)):
        for second in (cut + 1, cut + 7, cut + 40):
            passed, answer = observe(split_at(STREAM, sorted({cut, min(second, len(STREAM) - 1)})), strip=True)
            assert passed == stripped, (cut, second)
            assert answer.text == "Hello, world" and answer.completion_tokens == 3


def test_without_stripping_the_chunk_read_is_passed_on_as_is() -> None:
    observer = proxy.SSEObserver()
    for chunk in split_at(STREAM, [3, 90, 91]):
        assert observer.feed(chunk) is chunk  # no copy on the hot path


def test_stripping_keeps_other_empty_choices_and_usage_null() -> None:
    # Azure-style prompt filter chunks have no choices and no usage; OpenAI puts "usage": null on
    # every chunk when usage is asked for: neither is the usage chunk.
    filter_chunk = event([], prompt_filter_results=[])
    with_null = event([delta("Hi")], usage=None)
    passed, answer = observe([filter_chunk + with_null + USAGE + b"data: [DONE]\n\n"], strip=True)
    assert passed == filter_chunk + with_null + b"data: [DONE]\n\n"
    assert answer.text == "Hi" and answer.prompt_tokens == 7


def test_crlf_lines_and_a_last_line_without_newline() -> None:
    stream = event([delta("a")]).replace(b"\n", b"\r\n") + USAGE.replace(b"\n", b"\r\n") + b"data: [DONE]"
    passed, answer = observe(split_at(stream, [10]), strip=True)
    assert passed == event([delta("a")]).replace(b"\n", b"\r\n") + b"data: [DONE]"
    assert answer.text == "a" and answer.completion_tokens == 3
    # The usage chunk itself as the unterminated last line: stripped, its usage taken.
    passed, answer = observe([event([delta("b")]), USAGE.rstrip(b"\n")], strip=True)
    assert passed == event([delta("b")]) and answer.completion_tokens == 3


def test_only_the_first_choice_is_the_answer_and_tool_calls_merge() -> None:
    call = {"index": 0, "function": {"name": "track", "arguments": '{"order":'}}
    more = {"index": 0, "function": {"arguments": ' "A1"}'}}
    chunks = [event([delta("x", index=1), delta("y")]), event([{"index": 0, "delta": {"tool_calls": [call]}}]),
              event([{"index": 0, "delta": {"tool_calls": [more]}}])]
    _, answer = observe(chunks, strip=False)
    assert answer.text == "y"
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("track", '{"order": "A1"}')]


def test_json_that_orjson_refuses_is_read_as_json_reads_it() -> None:
    # NaN and integers past 64 bits are not JSON, but json.loads takes them: so does the observer.
    big = 2**70
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "n"}, "x": NaN}], "usage": {"prompt_tokens": %d}}\n\n' % big
    _, answer = observe([chunk], strip=False)
    assert answer.text == "n" and answer.prompt_tokens == big
    assert proxy.dumps({"seed": big}) == json.dumps({"seed": big}).encode()
    assert proxy.loads(b'{"a": "\\u00e9"}') == {"a": "\u00e9"}


def test_a_line_too_long_is_not_parsed_but_passed_on() -> None:
    huge = b"data: " + b"x" * (proxy._MAX_SSE_LINE + 10)
    for strip in (False, True):
        passed, answer = observe([event([delta("ok")]), huge[:100], huge[100:], b"\n\n" + USAGE], strip=strip)
        assert answer.truncated and answer.text == "ok"
        assert passed == event([delta("ok")]) + huge + b"\n\n" + (b"" if strip else USAGE)


@pytest.mark.parametrize(("options", "sent", "strip"), [
    (None, {"include_usage": True}, True),
    ({"include_usage": False}, {"include_usage": True}, True),
    ({"continuous_usage_stats": True}, {"continuous_usage_stats": True, "include_usage": True}, True),
    ({"include_usage": True}, {"include_usage": True}, False),
])
def test_ask_usage(options: dict | None, sent: dict, strip: bool) -> None:
    body = {"model": "m", "stream": True, **({"stream_options": options} if options is not None else {})}
    before = json.dumps(body)
    upstream, strips = proxy.ask_usage(body)
    assert upstream["stream_options"] == sent and strips is strip
    assert json.dumps(body) == before  # the client's body is not changed (shadows reuse it)


def test_a_read_with_bad_events_keeps_the_good_ones_and_only_them() -> None:
    # One orjson call per read; an event that is not JSON on its own never counts, even when
    # two broken halves would make one valid array element.
    half = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]\n\ndata: "y": 1}\n\n'
    for chunk in (event([delta("a")]) + b"data: {not json\n\n" + event([delta("b")]),
                  event([delta("a")]) + half + event([delta("b")])):
        _, answer = observe([chunk], strip=False)
        assert answer.text == "ab"


def test_one_event_per_read_is_observed_as_in_one_read() -> None:
    """Reads of one whole event (a paced stream's, taken without splitting lines) give what one read of all gives."""
    tool = event([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]},
                   "finish_reason": "tool_calls"}])
    events = [event([delta("Hello")]), b"data: not json\n\n", b"data:\n\n", b"data: NaN\n\n", b"data: 123456789012345678901234567890\n\n",
              event([delta(", wor")]), tool, b": a comment\n\n", USAGE, event([delta("ld")]), b"data: [DONE]\n\n"]
    for strip in (False, True):
        one_read = observe([b"".join(events)], strip=strip)
        per_event = observe(events, strip=strip)
        assert per_event[0] == one_read[0] == (b"".join(e for e in events if e != USAGE) if strip else b"".join(events))
        for got in (per_event[1], one_read[1]):
            assert (got.text, got.prompt_tokens, got.completion_tokens, got.finish_reasons) == ("Hello, world", 7, 3, ["tool_calls"])
            assert [(c.name, c.arguments) for c in got.tool_calls] == [("f", "{}")]


@pytest.mark.parametrize("sizes", [[8191, 1, 5], [8192, 3], [8000, 500, 7], [9000], [4096, 4096], [4096, 4095, 1, 1]])
def test_the_text_kept_is_a_bounded_prefix_however_it_was_read(sizes: list[int]) -> None:
    """Past MAX_CHECKED_CHARS the text is cut and the answer marked truncated; its length counts everything."""
    pieces = [chr(ord("a") + i) * n for i, n in enumerate(sizes)]
    whole = "".join(pieces)
    events = [event([delta(p)]) for p in pieces]
    for chunks in (events, [b"".join(events)]):
        _, answer = observe(chunks, strip=False)
        assert answer.text == whole[: proxy.MAX_CHECKED_CHARS]
        assert answer.length == len(whole)
        assert answer.truncated == (len(whole) > proxy.MAX_CHECKED_CHARS)


@pytest.mark.parametrize("answer", [
    {"choices": {"0": {"message": {"content": "x"}}}},  # choices an object
    {"choices": [{"message": ["not", "an", "object"]}]},
    {"choices": [{"message": {"content": 42}}]},
    {"choices": [{"delta": "text"}]},
    {"choices": [{"text": {"nested": True}}]},
    {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": "x", "completion_tokens": -5}},
    {"choices": [], "usage": {"prompt_tokens": 1e300, "completion_tokens": 18446744073709551617}},
    {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": True, "completion_tokens": 2.5}},
])
def test_answers_of_the_wrong_shape_are_read_as_far_as_they_go_never_raising(answer: dict) -> None:
    """A model server's answer is valid JSON of any shape: what is not where it belongs is skipped (it raised,
    a 500 for the client or a stream cut), and a token count that is not a non-negative integer counts 0."""
    data = json.dumps(answer).encode()
    whole = proxy.parse_answer(data)
    observer = proxy.SSEObserver()
    observer.feed(b"data: " + data + b"\n\n")
    streamed = observer.finish()
    for seen in (whole, streamed):
        assert seen.prompt_tokens >= 0 and seen.completion_tokens >= 0
        assert isinstance(seen.prompt_tokens, int) and isinstance(seen.completion_tokens, int)
        assert seen.text in ("", "ok")


def test_events_kept_for_a_later_parse_are_bounded_and_come_out_in_order() -> None:
    """A paced stream's events are parsed in batches (issue 14); what waits is bounded, and the answer is the same."""
    words = [f"w{i} " for i in range(2000)]
    events = [event([delta(w)]) for w in words]
    observer = proxy.SSEObserver()
    most = 0
    for e in events:
        assert observer.feed(e) == e
        most = max(most, observer._deferred_bytes)
    assert most <= proxy._DEFER_BYTES + max(len(e) for e in events)
    answer = observer.finish()
    assert answer.text == "".join(words)[: proxy.MAX_CHECKED_CHARS] and answer.length == len("".join(words))
