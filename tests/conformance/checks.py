"""Assertions about response bodies that several test files share.

Each takes the parsed JSON (a dict) as it came over the wire, so the same checks serve the
raw-HTTP tests and, through `model_dump`, the client-library tests.
"""

from __future__ import annotations

import re
from typing import Any

from wire import GENERATION_DONE_REASONS, assert_metrics, assert_rfc3339, is_int

DIGEST = re.compile(r"^[0-9a-f]{64}$")


def full_name(name: str) -> str:
    """`x` is `x:latest`: the name as /api/tags and /api/ps spell it."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def assert_error_body(body: Any) -> str:
    """Native error body: exactly {"error": "<non-empty text>"}; returns the text."""
    assert isinstance(body, dict) and set(body) == {"error"}, f"not a native error body: {body!r}"
    assert isinstance(body["error"], str) and body["error"], body
    return body["error"]


# /v1 error `type` by status. v0.17.4 answers 404 with "api_error"; newer Ollama (openai.go at
# v0.33) with "not_found_error". The openai client picks its exception class from the status
# code alone, so both are accepted for 404.
OPENAI_ERROR_TYPES = {400: {"invalid_request_error", "api_error"}, 404: {"not_found_error", "api_error"}}


def assert_openai_error_body(body: Any, status: int) -> str:
    """OpenAI error object: {"error": {"message", "type", "param": null, "code": null}}."""
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error body: {body!r}"
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] in OPENAI_ERROR_TYPES.get(status, {"api_error"}), err
    assert err["param"] is None and err["code"] is None, err
    return err["message"]


def assert_native_common(obj: dict, model: str) -> None:
    assert obj["model"] == model, f"model {obj['model']!r} does not echo the requested {model!r}"
    assert_rfc3339(obj["created_at"])
    assert isinstance(obj["done"], bool)


def assert_generate_chunk(obj: dict, model: str) -> None:
    assert_native_common(obj, model)
    assert isinstance(obj["response"], str)
    assert "error" not in obj, obj
    if not obj["done"]:
        assert "done_reason" not in obj and "total_duration" not in obj, obj


def assert_chat_chunk(obj: dict, model: str) -> None:
    assert_native_common(obj, model)
    msg = obj["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str), msg
    assert "error" not in obj, obj
    if not obj["done"]:
        assert "done_reason" not in obj and "total_duration" not in obj, obj


def assert_generation_final(obj: dict, *, with_context: bool) -> None:
    """Final chunk (or stream:false body) of a generate/chat that produced tokens."""
    assert obj["done"] is True
    assert obj["done_reason"] in GENERATION_DONE_REASONS, obj.get("done_reason")
    assert_metrics(obj)
    assert is_int(obj["eval_count"]) and obj["eval_count"] >= 1
    assert is_int(obj["prompt_eval_count"]) and obj["prompt_eval_count"] >= 1
    if with_context:
        ctx = obj["context"]
        assert isinstance(ctx, list) and ctx and all(is_int(t) for t in ctx), ctx
    else:
        assert "context" not in obj


def assert_floats(vector: Any) -> int:
    """A non-empty embedding vector of numbers; returns its length."""
    assert isinstance(vector, list) and vector, vector
    assert all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector)
    assert any(isinstance(x, float) for x in vector), "embedding holds no floats"
    return len(vector)


def assert_model_details(details: dict) -> None:
    assert details["format"] == "gguf", details
    for key in ("parent_model", "family", "parameter_size", "quantization_level"):
        assert isinstance(details[key], str), (key, details)
    families = details["families"]
    assert families is None or (isinstance(families, list) and all(isinstance(f, str) for f in families))


def assert_listed_model(entry: dict) -> None:
    """An entry of /api/tags or /api/ps."""
    assert isinstance(entry["name"], str) and entry["name"] == entry["model"], entry
    assert ":" in entry["name"], f"listed name without a tag: {entry['name']!r}"
    assert is_int(entry["size"]) and entry["size"] > 0
    assert DIGEST.match(entry["digest"]), f"digest is not bare hex: {entry['digest']!r}"
    assert_model_details(entry["details"])


def assert_usage(usage: dict, *, completion: bool = True) -> None:
    keys = {"prompt_tokens", "completion_tokens", "total_tokens"} if completion else {"prompt_tokens", "total_tokens"}
    assert keys <= set(usage), usage
    assert all(is_int(usage[k]) and usage[k] >= 0 for k in keys), usage
    if completion:
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
