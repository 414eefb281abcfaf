"""Generation options that clients rely on: length limits and stop sequences.

Text-independent properties only: whatever the model generates, it never produces more tokens
than asked for, and the text it returns never contains a stop sequence (Ollama cuts the text
at the stop sequence and answers done_reason "stop").
"""

from __future__ import annotations

import pytest

from wire import send

# A space: the test model's word pieces begin with one, so generation meets it early, but the
# property holds whether or not it does.
STOP = " "
LIMIT = 24
USER = [{"role": "user", "content": "Tell me about the mesh."}]

REQUESTS = {
    "generate": ("/api/generate", {"prompt": "Tell me about the mesh.", "stream": False,
                                   "options": {"num_predict": LIMIT, "stop": [STOP]}}),
    "chat": ("/api/chat", {"messages": USER, "stream": False, "options": {"num_predict": LIMIT, "stop": [STOP]}}),
    "v1-chat": ("/v1/chat/completions", {"messages": USER, "max_tokens": LIMIT, "stop": [STOP]}),
    "v1-completions": ("/v1/completions", {"prompt": "Tell me about the mesh.", "max_tokens": LIMIT, "stop": [STOP]}),
}


def text_and_reason(path: str, obj: dict) -> tuple[str, str]:
    if path == "/api/generate":
        return obj["response"], obj["done_reason"]
    if path == "/api/chat":
        return obj["message"]["content"], obj["done_reason"]
    choice = obj["choices"][0]
    return (choice["message"]["content"] if "message" in choice else choice["text"]), choice["finish_reason"]


@pytest.mark.parametrize("name", list(REQUESTS))
def test_stop_sequence_is_honoured(http, model: str, name: str):
    path, extra = REQUESTS[name]
    ex = send(http, "POST", path, {"model": model, **extra})
    assert ex.status == 200, ex.body[:300]
    text, reason = text_and_reason(path, ex.json())
    assert STOP not in text, f"stop sequence {STOP!r} in the returned text {text!r}"
    assert reason in ("stop", "length")


@pytest.mark.parametrize("limit", [1, 5])
def test_num_predict_bounds_eval_count(http, model: str, limit: int):
    obj = send(http, "POST", "/api/generate",
               {"model": model, "prompt": "Count.", "stream": False, "options": {"num_predict": limit}}).json()
    assert 1 <= obj["eval_count"] <= limit
    if obj["eval_count"] < limit:
        assert obj["done_reason"] == "stop", "fewer tokens than the limit, so it stopped by itself"
    v1 = send(http, "POST", "/v1/completions", {"model": model, "prompt": "Count.", "max_tokens": limit}).json()
    assert 1 <= v1["usage"]["completion_tokens"] <= limit
