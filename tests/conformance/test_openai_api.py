"""The OpenAI-compatible /v1/* endpoints through the official `openai` Python client."""

from __future__ import annotations

import openai
import pytest

from checks import assert_floats, assert_usage, full_name

MESSAGES = [{"role": "user", "content": "Say hello to the mesh."}]
MAX_TOKENS = 8
SAMPLING = {"max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7}
FINISH_REASONS = {"stop", "length"}


def test_chat_completion(oai: openai.OpenAI, model: str):
    resp = oai.chat.completions.create(model=model, messages=MESSAGES, **SAMPLING)
    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert isinstance(resp.created, int) and resp.created > 0
    assert resp.model == model
    assert resp.system_fingerprint == "fp_ollama"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in FINISH_REASONS
    assert_usage(resp.usage.model_dump())
    assert 1 <= resp.usage.completion_tokens <= MAX_TOKENS


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_chat_completion_stream(oai: openai.OpenAI, model: str, include_usage: bool):
    stream = oai.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True} if include_usage else None,
        **SAMPLING,
    )
    chunks = list(stream)
    assert chunks, "empty stream"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1, "one `created` for the whole stream"
    assert {c.model for c in chunks} == {model}
    assert {c.system_fingerprint for c in chunks} == {"fp_ollama"}

    body = chunks[:-1] if include_usage else chunks
    assert all(len(c.choices) == 1 for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in body]
    assert finish[:-1] == [None] * (len(finish) - 1), "only the last choice chunk has a finish_reason"
    assert finish[-1] in FINISH_REASONS
    if include_usage:
        last = chunks[-1]
        assert last.choices == []
        assert_usage(last.usage.model_dump())
        assert all(c.usage is None for c in body)
    else:
        assert all(c.usage is None for c in chunks)


def test_completion(oai: openai.OpenAI, model: str):
    resp = oai.completions.create(model=model, prompt="Once upon a time", **SAMPLING)
    assert resp.id.startswith("cmpl-")
    assert resp.object == "text_completion"
    assert resp.model == model
    assert isinstance(resp.created, int)
    assert len(resp.choices) == 1 and resp.choices[0].index == 0
    assert isinstance(resp.choices[0].text, str)
    assert resp.choices[0].finish_reason in FINISH_REASONS
    assert_usage(resp.usage.model_dump())


def test_completion_stream(oai: openai.OpenAI, model: str):
    chunks = list(
        oai.completions.create(
            model=model,
            prompt="Once upon a time",
            stream=True,
            stream_options={"include_usage": True},
            **SAMPLING,
        )
    )
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    body, last = chunks[:-1], chunks[-1]
    assert body and all(len(c.choices) == 1 for c in body)
    assert all(isinstance(c.choices[0].text, str) for c in body)
    assert body[-1].choices[0].finish_reason in FINISH_REASONS
    assert last.choices == []
    assert_usage(last.usage.model_dump())
    assert last.usage.completion_tokens >= 1


@pytest.mark.parametrize("inputs", ["one text", ["first", "second"]], ids=["str", "list"])
def test_embeddings(oai: openai.OpenAI, embed_model: str, inputs):
    resp = oai.embeddings.create(model=embed_model, input=inputs)
    assert resp.object == "list"
    assert resp.model == embed_model
    want = 1 if isinstance(inputs, str) else len(inputs)
    assert [d.index for d in resp.data] == list(range(want))
    assert {d.object for d in resp.data} == {"embedding"}
    assert len({assert_floats(d.embedding) for d in resp.data}) == 1
    assert_usage(resp.usage.model_dump(), completion=False)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens >= 1


def test_models(oai: openai.OpenAI, model: str):
    models = list(oai.models.list())
    assert full_name(model) in [m.id for m in models]
    for m in models:
        assert m.object == "model" and isinstance(m.created, int) and isinstance(m.owned_by, str)


def test_model_retrieve_echoes_name(oai: openai.OpenAI, model: str):
    m = oai.models.retrieve(model)
    assert m.id == model and m.object == "model"
