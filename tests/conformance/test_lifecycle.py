"""Preload, unload and model-name aliases (`x` is `x:latest`, the requested name is echoed)."""

from __future__ import annotations

import time

import ollama
import pytest

from checks import full_name

# Unloading finishes in the background on a real Ollama: poll /api/ps for at most this long.
UNLOAD_WAIT_S = 10.0


def loaded_names(client: ollama.Client) -> list[str]:
    return [m.model for m in client.ps().models]


@pytest.mark.parametrize("endpoint", ["generate", "chat"])
def test_preload(client: ollama.Client, model: str, endpoint: str):
    if endpoint == "generate":
        resp = client.generate(model=model, prompt="")
        assert resp.response == ""
    else:
        resp = client.chat(model=model, messages=[])
        assert resp.message.role == "assistant" and resp.message.content == ""
    assert resp.done is True and resp.done_reason == "load"
    assert resp.model == model
    assert resp.eval_count is None and resp.total_duration is None, "a preload reports no metrics"
    assert full_name(model) in loaded_names(client)


@pytest.mark.parametrize("endpoint", ["generate", "chat"])
def test_unload(client: ollama.Client, model: str, endpoint: str):
    client.generate(model=model, prompt="")  # make sure there is something to unload
    if endpoint == "generate":
        resp = client.generate(model=model, keep_alive=0)
    else:
        resp = client.chat(model=model, messages=[], keep_alive=0)
    assert resp.done is True and resp.done_reason == "unload"
    assert resp.model == model
    deadline = time.monotonic() + UNLOAD_WAIT_S
    while full_name(model) in loaded_names(client):
        assert time.monotonic() < deadline, f"{model} still in /api/ps after keep_alive 0"
        time.sleep(0.05)


def test_keep_alive_forever_and_back(client: ollama.Client, http, model: str):
    client.generate(model=model, prompt="", keep_alive=-1)
    forever = {m["name"]: m for m in http.get("/api/ps").json()["models"]}[full_name(model)]
    client.generate(model=model, prompt="", keep_alive="5m")
    normal = {m["name"]: m for m in http.get("/api/ps").json()["models"]}[full_name(model)]
    # "Forever" is about 292 years ahead; RFC3339 strings of the same form compare as dates.
    assert forever["expires_at"][:4] > normal["expires_at"][:4], (forever["expires_at"], normal["expires_at"])


@pytest.mark.parametrize("suffix", ["", ":latest"], ids=["bare", "latest"])
def test_alias_is_echoed(client: ollama.Client, model: str, gen_options: dict, suffix: str):
    base = model.split(":", 1)[0] if model.endswith(":latest") else model
    if ":" in base:
        pytest.skip(f"{model} has an explicit tag; the alias applies to :latest only")
    name = base + suffix
    assert client.generate(model=name, prompt="hi", options=gen_options).model == name
    assert client.chat(model=name, messages=[{"role": "user", "content": "hi"}], options=gen_options).model == name
    assert client.embed(model=name, input="hi").model == name
    assert client.show(name).details.format == "gguf"
    assert full_name(name) in loaded_names(client)
