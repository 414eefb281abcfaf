"""Wire-level framing: content types, chunked NDJSON, SSE events, and final-chunk field types.

These read raw bytes (httpx, no client library), because client libraries hide framing bugs
that a router or a proxy in between would trip over.
"""

from __future__ import annotations

import pytest

from checks import (
    assert_chat_chunk,
    assert_generate_chunk,
    assert_generation_final,
    assert_openai_error_body,
    assert_usage,
)
from wire import DONE, is_int, send

USER = [{"role": "user", "content": "Say hello to the mesh."}]


def assert_streamed(ex, media_type: str) -> None:
    assert ex.status == 200, ex.body[:300]
    assert ex.media_type == media_type, ex.content_type
    assert ex.chunked, "a stream must use chunked transfer encoding"
    assert "content-length" not in ex.headers, "a stream has no Content-Length"


def assert_single_json(ex) -> dict:
    assert ex.status == 200, ex.body[:300]
    assert ex.media_type == "application/json", ex.content_type
    assert not ex.chunks
    return ex.json()


# --- native NDJSON --------------------------------------------------------------------------


@pytest.mark.parametrize("stream_field", [None, True], ids=["default", "explicit"])
def test_generate_ndjson(http, model: str, gen_options: dict, stream_field):
    body = {"model": model, "prompt": "Say hello to the mesh.", "options": gen_options}
    if stream_field is not None:
        body["stream"] = stream_field
    ex = send(http, "POST", "/api/generate", body)  # streaming is the default on /api/*
    assert_streamed(ex, "application/x-ndjson")
    for chunk in ex.chunks:
        assert_generate_chunk(chunk, model)
    assert [c["done"] for c in ex.chunks][-1] is True
    assert not any(c["done"] for c in ex.chunks[:-1])
    final = ex.chunks[-1]
    assert final["response"] == ""
    assert_generation_final(final, with_context=True)


def test_chat_ndjson(http, model: str, gen_options: dict):
    ex = send(http, "POST", "/api/chat", {"model": model, "messages": USER, "options": gen_options})
    assert_streamed(ex, "application/x-ndjson")
    for chunk in ex.chunks:
        assert_chat_chunk(chunk, model)
    assert not any(c["done"] for c in ex.chunks[:-1])
    final = ex.chunks[-1]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert_generation_final(final, with_context=False)


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_native_stream_false(http, model: str, gen_options: dict, path: str):
    body = {"model": model, "options": gen_options, "stream": False}
    body |= {"prompt": "hi"} if path == "/api/generate" else {"messages": USER}
    obj = assert_single_json(send(http, "POST", path, body))
    (assert_generate_chunk if path == "/api/generate" else assert_chat_chunk)(obj, model)
    assert_generation_final(obj, with_context=path == "/api/generate")


def test_raw_generate_has_no_context(http, model: str, gen_options: dict):
    obj = assert_single_json(
        send(http, "POST", "/api/generate", {"model": model, "prompt": "hi", "raw": True, "stream": False, "options": gen_options})
    )
    assert_generation_final(obj, with_context=False)


@pytest.mark.parametrize("stream", [None, True, False], ids=["default", "stream", "json"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_preload_is_one_json_object(http, model: str, path: str, stream):
    """A preload answers with a single JSON object even when streaming was asked for."""
    body = {"model": model} | ({"prompt": ""} if path == "/api/generate" else {"messages": []})
    if stream is not None:
        body["stream"] = stream
    obj = assert_single_json(send(http, "POST", path, body))
    assert obj["done"] is True and obj["done_reason"] == "load"
    assert set(obj) == {"model", "created_at", "done", "done_reason"} | (
        {"response"} if path == "/api/generate" else {"message"}
    )


def test_embed_wire_types(http, embed_model: str):
    obj = assert_single_json(send(http, "POST", "/api/embed", {"model": embed_model, "input": ["a", "b"]}))
    assert set(obj) >= {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert all(is_int(obj[k]) for k in ("total_duration", "load_duration", "prompt_eval_count"))
    assert len(obj["embeddings"]) == 2


# --- OpenAI SSE -----------------------------------------------------------------------------


def test_chat_completions_sse(http, model: str):
    ex = send(
        http,
        "POST",
        "/v1/chat/completions",
        {"model": model, "messages": USER, "stream": True, "max_tokens": 8, "temperature": 0,
         "stream_options": {"include_usage": True}},
    )
    assert_streamed(ex, "text/event-stream")
    events = ex.chunks
    assert events[-1] == DONE
    objs = events[:-1]
    usage = objs[-1]
    assert usage["choices"] == [] and set(usage) >= {"id", "object", "created", "model", "usage"}
    assert_usage(usage["usage"])
    for obj in objs[:-1]:
        assert obj["object"] == "chat.completion.chunk"
        assert is_int(obj["created"])
        (choice,) = obj["choices"]
        assert choice["index"] == 0 and isinstance(choice["delta"], dict)
        assert "usage" not in obj or obj["usage"] is None
    reasons = [o["choices"][0]["finish_reason"] for o in objs[:-1]]
    assert reasons[-1] in ("stop", "length") and all(r is None for r in reasons[:-1])


def test_completions_sse(http, model: str):
    ex = send(
        http,
        "POST",
        "/v1/completions",
        {"model": model, "prompt": "hi", "stream": True, "max_tokens": 8, "temperature": 0,
         "stream_options": {"include_usage": True}},
    )
    assert_streamed(ex, "text/event-stream")
    objs = ex.chunks[:-1]
    assert all(o["object"] == "text_completion" for o in objs)
    assert objs[-1]["choices"] == []
    assert_usage(objs[-1]["usage"])
    for obj in objs[:-1]:
        (choice,) = obj["choices"]
        assert isinstance(choice["text"], str) and choice["index"] == 0


def test_chat_completions_sse_without_usage(http, model: str):
    ex = send(http, "POST", "/v1/chat/completions", {"model": model, "messages": USER, "stream": True, "max_tokens": 4})
    assert_streamed(ex, "text/event-stream")
    assert all(o["choices"] and "usage" not in o for o in ex.chunks[:-1])


DEFAULT_NOT_STREAMED = {
    "/v1/chat/completions": ({"messages": USER, "max_tokens": 4}, "chat.completion"),
    "/v1/completions": ({"prompt": "hi", "max_tokens": 4}, "text_completion"),
    "/v1/embeddings": ({"input": "hi"}, "list"),
}


@pytest.mark.parametrize("path", list(DEFAULT_NOT_STREAMED))
def test_openai_default_is_not_streamed(http, model: str, path: str):
    extra, kind = DEFAULT_NOT_STREAMED[path]
    obj = assert_single_json(send(http, "POST", path, {"model": model, **extra}))
    assert obj["object"] == kind


def test_openai_error_is_json_not_sse(http, missing_model: str):
    ex = send(http, "POST", "/v1/chat/completions", {"model": missing_model, "messages": USER, "stream": True})
    assert ex.status == 404 and ex.media_type == "application/json" and not ex.chunks
    assert_openai_error_body(ex.json(), 404)


# --- plain endpoints -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/version", "/api/tags", "/api/ps", "/v1/models"])
def test_get_endpoints_are_json(http, path: str):
    obj = assert_single_json(send(http, "GET", path))
    assert isinstance(obj, dict)
