"""The official ``openai`` SDK against a live Exemplar (started by
``scripts/python-tests.sh``): what a LangChain, DSPy or notebook user's code does through it."""

import os

import openai
import pytest

URL = os.environ.get("EXEMPLAR_URL", "")
KEY = os.environ.get("EXEMPLAR_API_KEY", "")
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def client():
    if not URL:
        pytest.fail("EXEMPLAR_URL is not set: run scripts/python-tests.sh, which starts a server")
    return openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)


def test_models_are_listed(client):
    models = client.models.list().data
    assert len(models) >= 1
    assert models[0].object == "model" and models[0].id


def test_chat_answers_whole(client):
    model = client.models.list().data[0].id
    answer = client.chat.completions.create(model=model, messages=QUESTION, max_completion_tokens=12, temperature=0)
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert "4" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens >= 1
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_chat_streams_the_same_text(client):
    model = client.models.list().data[0].id
    whole = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_chat_logprobs(client):
    answer = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=QUESTION, max_tokens=4, logprobs=True, top_logprobs=3
    )
    tokens = answer.choices[0].logprobs.content
    assert len(tokens) == answer.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in tokens)


def test_completions_with_logprobs(client):
    answer = client.completions.create(
        model=client.models.list().data[0].id, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    choice = answer.choices[0]
    assert choice.text.startswith(" Paris")
    assert len(choice.logprobs.tokens) == 4
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)


def test_a_refused_field_raises_the_sdks_error(client):
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert refused.value.code == "unsupported_field"
    assert refused.value.param == "tools"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert unknown.value.code == "model_not_found"


def test_a_wrong_key_is_the_sdks_authentication_error():
    stranger = openai.OpenAI(base_url=f"{URL}/v1", api_key="exm_" + "0" * 64, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
