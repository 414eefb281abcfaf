"""Error statuses and bodies, in both dialects, through the clients and on the wire.

Statuses are those of a real Ollama v0.17.4 (Ollama's docs/api.md and server/routes.go).
"""

from __future__ import annotations

import ollama
import openai
import pytest

from checks import assert_error_body, assert_openai_error_body
from wire import send

USER = [{"role": "user", "content": "hi"}]


def native_bodies(model: str) -> dict[str, dict]:
    """A valid request body for each native inference endpoint, naming `model`."""
    return {
        "/api/generate": {"model": model, "prompt": "hi"},
        "/api/chat": {"model": model, "messages": USER},
        "/api/embed": {"model": model, "input": "hi"},
        "/api/embeddings": {"model": model, "prompt": "hi"},
        "/api/show": {"model": model},
    }


def openai_bodies(model: str) -> dict[str, dict]:
    return {
        "/v1/chat/completions": {"model": model, "messages": USER},
        "/v1/completions": {"model": model, "prompt": "hi"},
        "/v1/embeddings": {"model": model, "input": "hi"},
    }


NATIVE_PATHS = list(native_bodies("m"))
OPENAI_PATHS = list(openai_bodies("m"))


# --- unknown model: 404 -------------------------------------------------------------------


@pytest.mark.parametrize("path", NATIVE_PATHS)
@pytest.mark.parametrize("stream", [None, True, False], ids=["default", "stream", "json"])
def test_unknown_model_native(http, missing_model: str, path: str, stream):
    body = native_bodies(missing_model)[path]
    if stream is not None:
        body["stream"] = stream
    ex = send(http, "POST", path, body)
    # Scheduling errors happen before the first byte, so a stream still gets its real status.
    assert ex.status == 404, ex.body
    assert ex.media_type == "application/json"
    assert missing_model.split(":")[0] in assert_error_body(ex.json())


@pytest.mark.parametrize(
    ("path", "stream"),
    [("/v1/chat/completions", False), ("/v1/chat/completions", True), ("/v1/completions", False),
     ("/v1/completions", True), ("/v1/embeddings", None)],
)
def test_unknown_model_openai(http, missing_model: str, path: str, stream):
    body = openai_bodies(missing_model)[path]
    if stream is not None:
        body["stream"] = stream
    ex = send(http, "POST", path, body)
    assert ex.status == 404, ex.body
    assert ex.media_type == "application/json"
    assert missing_model.split(":")[0] in assert_openai_error_body(ex.json(), 404)


def test_unknown_model_retrieve(http, missing_model: str):
    ex = send(http, "GET", f"/v1/models/{missing_model}")
    assert ex.status == 404
    assert_openai_error_body(ex.json(), 404)


def test_unknown_model_ollama_client(client: ollama.Client, missing_model: str):
    calls = [
        lambda: client.generate(model=missing_model, prompt="hi"),
        lambda: next(client.generate(model=missing_model, prompt="hi", stream=True)),
        lambda: client.chat(model=missing_model, messages=USER),
        lambda: next(client.chat(model=missing_model, messages=USER, stream=True)),
        lambda: client.embed(model=missing_model, input="hi"),
        lambda: client.embeddings(model=missing_model, prompt="hi"),
        lambda: client.show(missing_model),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as exc:
            call()
        assert exc.value.status_code == 404
        assert missing_model.split(":")[0] in exc.value.error


def test_unknown_model_openai_client(oai: openai.OpenAI, missing_model: str):
    calls = [
        lambda: oai.chat.completions.create(model=missing_model, messages=USER),
        lambda: oai.chat.completions.create(model=missing_model, messages=USER, stream=True),
        lambda: oai.completions.create(model=missing_model, prompt="hi"),
        lambda: oai.embeddings.create(model=missing_model, input="hi"),
        lambda: oai.models.retrieve(missing_model),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.status_code == 404
        assert isinstance(exc.value.body, dict) and isinstance(exc.value.body.get("message"), str)


# --- missing model: 400 "model is required" ------------------------------------------------
# (A real Ollama answers a missing model on /api/generate and /v1/completions with 404
# "model '' not found", and on /api/embed and /v1/embeddings with 500; only the endpoints that
# answer 400 are pinned here. The differential test compares all of them with a real Ollama.)


@pytest.mark.parametrize("path", ["/api/chat", "/api/embeddings", "/api/show"])
def test_missing_model_native(http, path: str):
    body = native_bodies("x")[path]
    del body["model"]
    ex = send(http, "POST", path, body)
    assert ex.status == 400
    assert assert_error_body(ex.json()) == "model is required"


def test_missing_model_openai(http):
    ex = send(http, "POST", "/v1/chat/completions", {"messages": USER})
    assert ex.status == 400
    assert "model is required" in assert_openai_error_body(ex.json(), 400)


# --- empty messages on /v1: 400 -------------------------------------------------------------


def test_empty_messages_openai(oai: openai.OpenAI, http, model: str):
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=model, messages=[])
    assert exc.value.status_code == 400
    ex = send(http, "POST", "/v1/chat/completions", {"model": model, "messages": []})
    assert ex.status == 400
    assert_openai_error_body(ex.json(), 400)
    assert ex.json()["error"]["type"] == "invalid_request_error"


# --- malformed and missing bodies: 400 ------------------------------------------------------


@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_malformed_json_native(http, path: str):
    ex = send(http, "POST", path, raw=b'{"model": ')
    assert ex.status == 400
    assert ex.media_type == "application/json"
    assert_error_body(ex.json())


@pytest.mark.parametrize("path", OPENAI_PATHS)
def test_malformed_json_openai(http, path: str):
    ex = send(http, "POST", path, raw=b'{"model": ')
    assert ex.status == 400
    assert ex.media_type == "application/json"
    assert_openai_error_body(ex.json(), 400)
    assert ex.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_missing_body_native(http, path: str):
    ex = send(http, "POST", path, raw=b"")
    assert ex.status == 400
    assert assert_error_body(ex.json()) == "missing request body"


# --- routing: unknown path 404, wrong method 405 -------------------------------------------


def test_unknown_path(http):
    ex = send(http, "GET", "/api/no-such-endpoint")
    assert ex.status == 404


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/generate"), ("GET", "/api/chat"), ("POST", "/api/tags")])
def test_wrong_method(http, method: str, path: str):
    ex = send(http, method, path)
    assert ex.status == 405


# --- capabilities: what /api/show does not advertise is refused with 400 -------------------

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                           "parameters": {"type": "object", "properties": {}}}}]
CAPABILITY_REQUESTS = [
    ("tools", "/api/chat", {"messages": USER, "tools": TOOLS, "stream": False}),
    ("tools", "/v1/chat/completions", {"messages": USER, "tools": TOOLS}),
    ("thinking", "/api/generate", {"prompt": "hi", "think": True, "stream": False}),
    ("thinking", "/api/chat", {"messages": USER, "think": True}),
    ("thinking", "/v1/chat/completions", {"messages": USER, "reasoning_effort": "high"}),
]


@pytest.mark.parametrize(("capability", "path", "extra"), CAPABILITY_REQUESTS,
                         ids=[f"{c}-{p}" for c, p, _ in CAPABILITY_REQUESTS])
def test_capability_enforced(http, model: str, gen_options: dict, capability: str, path: str, extra: dict):
    capabilities = http.post("/api/show", json={"model": model}).json()["capabilities"]
    body = {"model": model, **extra}
    body |= {"max_tokens": gen_options["num_predict"]} if path.startswith("/v1") else {"options": gen_options}
    ex = send(http, "POST", path, body)
    if capability in capabilities:
        assert ex.status == 200, ex.body[:300]
        return
    # Refused before the first byte, so with a JSON error even when streaming was asked for.
    assert ex.status == 400, f"{model} lacks {capability!r} ({capabilities}) but got {ex.status}"
    assert ex.media_type == "application/json"
    text = assert_openai_error_body(ex.json(), 400) if path.startswith("/v1") else assert_error_body(ex.json())
    assert f"does not support {capability}" in text
