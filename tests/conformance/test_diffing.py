"""The differential comparator on made-up exchanges: it must see what matters and only that.

Runs without any server.
"""

from __future__ import annotations

import json

import httpx

from diffing import Diff, allowance, compare
from test_differential import ALLOWED
from wire import Exchange, parse_ndjson, parse_sse

JSON_CT = "application/json; charset=utf-8"


def exchange(body, *, status=200, ct=JSON_CT, chunked=False, method="POST", path="/api/x") -> Exchange:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": ct}
    headers |= {"transfer-encoding": "chunked"} if chunked else {"content-length": str(len(raw))}
    ex = Exchange(method, path, status, httpx.Headers(headers), raw)
    if ct == "application/x-ndjson":
        ex.chunks = parse_ndjson(raw)
    elif ct == "text/event-stream":
        ex.chunks = parse_sse(raw)
    return ex


def ndjson(*objs) -> Exchange:
    return exchange(b"".join(json.dumps(o).encode() + b"\n" for o in objs), ct="application/x-ndjson", chunked=True)


def sse(*objs) -> Exchange:
    events = [f"data: {json.dumps(o)}\n\n" for o in objs] + ["data: [DONE]\n\n"]
    return exchange("".join(events).encode(), ct="text/event-stream", chunked=True)


def kinds(diffs: list[Diff]) -> set[tuple[str, str]]:
    return {(d.where, d.kind) for d in diffs}


FINAL = {"model": "m", "created_at": "t", "response": "", "done": True, "done_reason": "length",
         "total_duration": 5, "eval_count": 2}
DELTA = {"model": "m", "created_at": "t", "response": "a", "done": False}


def test_equal_shapes_with_different_text_and_numbers():
    a = exchange({"model": "m", "response": "hello", "eval_count": 3, "vec": [0.5, 1.25]})
    b = exchange({"model": "m", "response": "bye", "eval_count": 9, "vec": [0.1, 0]})
    assert compare(a, b) == []


def test_missing_extra_and_type():
    a = exchange({"model": "m", "total_duration": 5, "details": {"family": "llama"}})
    b = exchange({"model": "m", "total_duration": 5.0, "details": {}, "extra": None})
    assert kinds(compare(a, b)) == {("$.total_duration", "type"), ("$.details.family", "missing"), ("$.extra", "extra")}


def test_status_content_type_and_framing():
    assert kinds(compare(exchange({}), exchange({}, status=404))) >= {("status", "value")}
    assert kinds(compare(exchange({}), exchange({}, ct="text/plain"))) == {("header:content-type", "header")}
    assert kinds(compare(exchange({}), exchange({}, ct="application/json"))) == {
        ("header:content-type", "header-params")
    }
    stream = ndjson(DELTA, FINAL)
    unchunked = ndjson(DELTA, FINAL)
    unchunked.headers = httpx.Headers({"content-type": "application/x-ndjson", "content-length": "9"})
    assert ("header:transfer-encoding", "framing") in kinds(compare(stream, unchunked))


def test_pinned_values_and_error_text():
    assert kinds(compare(exchange({"done_reason": "load"}), exchange({"done_reason": "stop"}))) == {
        ("$.done_reason", "value")
    }
    err = compare(exchange({"error": "model 'x' not found"}, status=404), exchange({"error": "not found"}, status=404))
    assert kinds(err) == {("$.error", "value")}


def test_stream_sequences():
    assert compare(ndjson(DELTA, DELTA, FINAL), ndjson(DELTA, FINAL)) == []
    # A final chunk without done_reason, or a stream without a final chunk, is caught.
    broken = dict(FINAL)
    del broken["done_reason"]
    assert ("chunk:final.done_reason", "missing") in kinds(compare(ndjson(DELTA, FINAL), ndjson(DELTA, broken)))
    assert ("stream", "sequence") in kinds(compare(ndjson(DELTA, FINAL), ndjson(DELTA, DELTA)))
    # A content chunk of a different shape is caught.
    odd = dict(DELTA, response=1)
    assert ("chunk:content.response", "type") in kinds(compare(ndjson(DELTA, FINAL), ndjson(odd, FINAL)))


def test_sse_usage_chunk_required():
    content = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
    finish = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1}}
    assert compare(sse(content, finish, usage), sse(content, content, finish, usage)) == []
    assert ("stream", "sequence") in kinds(compare(sse(content, finish, usage), sse(content, finish)))


def test_allow_list_matching():
    stop_vs_length = Diff("chunk:final.done_reason", "value", frozenset({"stop"}), frozenset({"length"}))
    load_vs_stop = Diff("$.done_reason", "value", frozenset({"load"}), frozenset({"stop"}))
    assert allowance("generate-stream", stop_vs_length, ALLOWED) is not None
    assert allowance("preload-generate", load_vs_stop, ALLOWED) is None
    no_content = compare(ndjson(FINAL), ndjson(DELTA, FINAL))
    assert kinds(no_content) == {("chunk:content", "presence")}
    assert all(allowance("generate-stream", d, ALLOWED) for d in no_content)
    type_label = Diff("$.error.type", "value", frozenset({"api_error"}), frozenset({"not_found_error"}))
    assert allowance("unknown-v1-chat", type_label, ALLOWED) is not None
    reversed_label = Diff("$.error.type", "value", frozenset({"not_found_error"}), frozenset({"api_error"}))
    assert allowance("unknown-v1-chat", reversed_label, ALLOWED) is None
