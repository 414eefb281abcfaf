"""The native /api/* endpoints through the official `ollama` Python client."""

from __future__ import annotations

import re

import ollama
import pytest

from checks import (
    assert_chat_chunk,
    assert_floats,
    assert_generate_chunk,
    assert_generation_final,
    assert_listed_model,
    full_name,
)
from wire import assert_rfc3339

PROMPT = "Say hello to the mesh."
MESSAGES = [{"role": "user", "content": PROMPT}]


def dumped(resp) -> dict:
    """The client's parsed object back as wire JSON (fields the server left out stay out)."""
    return resp.model_dump(exclude_none=True, by_alias=True)


def collect(result, stream: bool) -> list[dict]:
    return [dumped(c) for c in result] if stream else [dumped(result)]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_generate(client: ollama.Client, model: str, gen_options: dict, stream: bool):
    chunks = collect(client.generate(model=model, prompt=PROMPT, options=gen_options, stream=stream), stream)
    for c in chunks:
        assert_generate_chunk(c, model)
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert_generation_final(chunks[-1], with_context=True)
    assert chunks[-1]["eval_count"] <= gen_options["num_predict"]
    if stream:
        assert chunks[-1]["response"] == "", "the final chunk of a stream carries no text"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_chat(client: ollama.Client, model: str, gen_options: dict, stream: bool):
    chunks = collect(client.chat(model=model, messages=MESSAGES, options=gen_options, stream=stream), stream)
    for c in chunks:
        assert_chat_chunk(c, model)
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert_generation_final(chunks[-1], with_context=False)
    assert chunks[-1]["eval_count"] <= gen_options["num_predict"]


def test_chat_with_system_and_history(client: ollama.Client, model: str, gen_options: dict):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again"},
    ]
    resp = dumped(client.chat(model=model, messages=messages, options=gen_options))
    assert_chat_chunk(resp, model)
    assert_generation_final(resp, with_context=False)


def test_generate_respects_num_predict(client: ollama.Client, model: str):
    resp = client.generate(model=model, prompt=PROMPT, options={"num_predict": 3, "temperature": 0})
    assert 1 <= resp.eval_count <= 3
    assert resp.done_reason in ("stop", "length")


@pytest.mark.parametrize("inputs", ["one text", ["first text", "second text", "third"]], ids=["str", "list"])
def test_embed(client: ollama.Client, embed_model: str, inputs):
    resp = client.embed(model=embed_model, input=inputs)
    body = dumped(resp)
    assert body["model"] == embed_model
    want = 1 if isinstance(inputs, str) else len(inputs)
    assert len(resp.embeddings) == want
    dims = {assert_floats(list(e)) for e in resp.embeddings}
    assert len(dims) == 1, f"embeddings of different lengths: {dims}"
    assert isinstance(resp.total_duration, int) and resp.total_duration > 0
    assert isinstance(resp.prompt_eval_count, int) and resp.prompt_eval_count >= want


def test_embeddings_legacy(client: ollama.Client, embed_model: str):
    resp = client.embeddings(model=embed_model, prompt="one text")
    assert assert_floats(list(resp.embedding)) > 0
    assert set(dumped(resp)) == {"embedding"}


def test_embed_and_legacy_agree_on_dimensions(client: ollama.Client, embed_model: str):
    new = client.embed(model=embed_model, input="same text")
    old = client.embeddings(model=embed_model, prompt="same text")
    assert len(new.embeddings[0]) == len(old.embedding)


def test_list(client: ollama.Client, http, model: str):
    resp = client.list()
    assert full_name(model) in [m.model for m in resp.models]
    raw = http.get("/api/tags").json()
    assert set(raw) == {"models"}
    for entry in raw["models"]:
        assert_listed_model(entry)
        assert_rfc3339(entry["modified_at"])


def test_ps_shows_loaded_model(client: ollama.Client, http, loaded: str):
    resp = client.ps()
    assert full_name(loaded) in [m.model for m in resp.models]
    raw = http.get("/api/ps").json()
    assert set(raw) == {"models"}
    for entry in raw["models"]:
        assert_listed_model(entry)
        assert isinstance(entry["size_vram"], int) and 0 <= entry["size_vram"] <= entry["size"]
        assert_rfc3339(entry["expires_at"])
        assert isinstance(entry["context_length"], int) and entry["context_length"] > 0


def test_show(client: ollama.Client, http, model: str):
    resp = client.show(model)
    body = dumped(resp)
    for key in ("modelfile", "template"):
        assert isinstance(body[key], str), key
    # Present only when the model has them (library models do; the differential test checks
    # them against a real Ollama serving the same model).
    for key in ("parameters", "license", "system"):
        assert isinstance(body.get(key, ""), str), key
    assert resp.details.format == "gguf"
    info = resp.modelinfo
    arch = info["general.architecture"]
    assert isinstance(arch, str) and arch
    assert isinstance(info[f"{arch}.context_length"], int) and info[f"{arch}.context_length"] > 0
    assert "completion" in resp.capabilities or "embedding" in resp.capabilities
    assert_rfc3339(http.post("/api/show", json={"model": model}).json()["modified_at"])


def test_version(http):
    resp = http.get("/api/version")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"version"} and re.match(r"^\d+\.\d+\.\d+", body["version"]), body
    assert http.head("/api/version").status_code == 200


def test_root(http):
    resp = http.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == "Ollama is running"
    head = http.head("/")
    assert head.status_code == 200 and head.content == b""


def test_copy_and_delete(client: ollama.Client, http, model: str):
    copy = "conformance-copy:v1"
    assert client.copy(model, copy).status == "success"
    try:
        assert copy in [m.model for m in client.list().models]
        assert client.show(copy).details.format == "gguf"
    finally:
        assert client.delete(copy).status == "success"
    assert copy not in [m.model for m in client.list().models]
    # 200 with an empty body, then 404 with a native error body.
    gone = http.request("DELETE", "/api/delete", json={"model": copy})
    assert gone.status_code == 404 and "error" in gone.json()


def test_copy_unknown_source(http, missing_model: str):
    resp = http.post("/api/copy", json={"source": missing_model, "destination": "conformance-never"})
    assert resp.status_code == 404 and set(resp.json()) == {"error"}
