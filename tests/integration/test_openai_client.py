"""The official openai client works through the router unchanged."""

from pathlib import Path

import openai
import pytest

from .harness import plan, write_plan

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def router(procs, backends, tmp_path: Path):
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, candidate, candidateWeight=0, shadowPercent=100))
    return procs.router(path)


@pytest.fixture
def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=router.key, max_retries=0)


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "Where is my parcel?"}], extra_headers={"x-user-id": "u1"}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Open Orders and press Track")
    assert completion.model == "model-a"
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-inferstack-revision"] == "rev-a"
    assert raw.headers["x-inferstack-role"] == "stable"


def test_chat_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="team-a/support",
        messages=[{"role": "user", "content": "Do you ship to Canada?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Yes, we ship to Canada in 5 to 8 working days."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_and_models(client: openai.OpenAI) -> None:
    assert client.completions.create(model="support", prompt="Who are you?").choices[0].text.startswith("I am")
    assert [m.id for m in client.models.list()] == ["support"]


def test_errors_raise_the_clients_own_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
