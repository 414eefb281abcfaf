"""Differential test: the same requests to a candidate (OLLAMA_URL, e.g. the simulator) and to a
reference (OLLAMA_REFERENCE_URL, a real Ollama), comparing what clients depend on:

- status codes; the Content-Type header; stream framing (chunked, no Content-Length);
- for JSON bodies and for every stream chunk: keys and value types, recursively ("shapes"), and
  the values clients branch on (done, done_reason, object, role, finish_reason, model, ...);
- error bodies exactly (text included); plain-text bodies exactly;
- streams chunk by chunk: the sequence of structural chunks (final, finish, usage, [DONE]) and
  the shapes of the content chunks.

Generated text, timings, ids, digests and sizes differ by design and are never compared.
Every other tolerated difference is in ALLOWED, each with the reason it cannot matter; with
OLLAMA_CANDIDATE=router, ROUTER_ALLOWED adds what a fleet answers differently from one node.
Skipped unless both OLLAMA_URL and OLLAMA_REFERENCE_URL are set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from diffing import Allow, allowance, compare
from wire import GEN_OPTIONS, TIMEOUT, send

REFERENCE_URL = os.environ.get("OLLAMA_REFERENCE_URL", "").strip().rstrip("/")
CANDIDATE_URL = os.environ.get("OLLAMA_URL", "").strip().rstrip("/")

pytestmark = pytest.mark.skipif(
    not (REFERENCE_URL and CANDIDATE_URL),
    reason="set OLLAMA_URL (candidate) and OLLAMA_REFERENCE_URL (a real Ollama) to run the differential test",
)

MODEL = os.environ.get("OLLAMA_TEST_MODEL", "tiny")
EMBED_MODEL = os.environ.get("OLLAMA_TEST_EMBED_MODEL", MODEL)
MISSING = "no-such-model-differential"

GENERATION_END = frozenset({"stop", "length"})


# --- the allow-list: every tolerated difference, and why it cannot matter -----------------

ALLOWED: tuple[Allow, ...] = (
    Allow(
        "*", "header:content-length", frozenset({"framing"}),
        "Non-streamed bodies: Go's net/http sets Content-Length only when the whole body fits its "
        "write buffer (about 2 KB) and sends larger ones chunked (e.g. /api/show, embeddings); a "
        "client reads a non-streamed body to its end either way.",
    ),
    Allow(
        "*", "*.done_reason", frozenset({"value"}),
        "Whether generation ends on an end-of-sequence token (stop) or on num_predict (length) "
        "depends on the generated text, which differs by design. load/unload are still compared.",
        values=GENERATION_END,
    ),
    Allow(
        "*", "*.finish_reason", frozenset({"value"}),
        "As done_reason: stop vs length depends on the generated text.",
        values=GENERATION_END | {None},
    ),
    Allow(
        "*", "chunk:content", frozenset({"presence"}),
        "Text-dependent: a real Ollama holds back tokens that end inside a UTF-8 sequence, so with "
        "the random-weight test model a short stream may carry no content chunk at all. When both "
        "sides have content chunks, their shapes are compared.",
    ),
    Allow(
        "*", "header:content-type", frozenset({"header-params"}),
        "Same media type, different parameters: gin answers some errors (e.g. the /v1 middleware's "
        "own 400s) with 'application/json; charset=utf-8' and others with 'application/json'. JSON "
        "is UTF-8 by definition (RFC 8259 defines no charset parameter) and every client decodes "
        "it as UTF-8 either way. The media type itself is compared strictly.",
    ),
    Allow(
        "unknown-v1-* nomodel-v1-*", "$.error.type", frozenset({"value"}),
        "Version-dependent: v0.17.4's OpenAI middleware labels the errors of the native handlers "
        "`api_error` whatever their status; newer Ollama (openai.go at v0.33) "
        "derives the type from the status (404 not_found_error, 400 invalid_request_error). The "
        "openai client picks its exception class (NotFoundError, BadRequestError) from the HTTP "
        "status alone, and the status and message are still compared.",
        values=frozenset({"api_error", "not_found_error", "invalid_request_error"}),
        reference=frozenset({"api_error"}),
    ),
    Allow(
        "nocap-v1-*", "$.error.type", frozenset({"value"}),
        "Version-dependent, as above: v0.17.4 labels the native handler's 400 for a capability the "
        "model lacks (tools, thinking) `api_error`; newer Ollama (openai.go at v0.33) says "
        "`invalid_request_error` for a 400. The openai client raises BadRequestError from "
        "the status alone; status and message are still compared.",
        values=frozenset({"api_error", "invalid_request_error"}),
        reference=frozenset({"api_error"}),
    ),
    Allow(
        "badjson-* badtype-*", "$.error*", frozenset({"value"}),
        "The text of a malformed-JSON or wrong-type error is the message of the server's JSON "
        "decoder (Go's encoding/json: 'unexpected EOF', 'json: cannot unmarshal string into Go "
        "struct field GenerateRequest.stream of type bool'), which no other implementation "
        "reproduces in general; it describes the parse failure to a human and no client branches "
        "on it. Status, content type and body shape are still compared.",
    ),
    Allow(
        "show*", "$.model_info.*", frozenset({"extra", "value"}),
        "model_info mirrors the GGUF metadata of the model file: the simulator describes the "
        "architecture its catalogue implies, so its numbers differ and it may show keys this file "
        "lacks. Every key the reference shows must still be there with the same JSON type "
        "(clients such as Open WebUI read the attention, rope and tokenizer keys).",
    ),
)


# Differences that are the router's by design, tolerated only when the candidate is the router
# (OLLAMA_CANDIDATE=router): it is a fleet, where the reference is one of its nodes.
ROUTER_ALLOWED: tuple[Allow, ...] = (
    Allow(
        "tags*", "$.models[]*", frozenset({"value"}),
        "The router answers /api/tags for the whole fleet: the union of every node's models, so it "
        "lists models the reference node does not have. Each entry keeps Ollama's shape, which is "
        "still compared.",
    ),
    Allow(
        "ps", "$.models[].node", frozenset({"extra"}),
        "The fleet's /api/ps names the node of every loaded model in an extra `node` field; "
        "clients ignore fields they do not know.",
    ),
    Allow(
        "unknown-*", "$.error*", frozenset({"value"}),
        "For a model no node has, the router answers with Ollama's own text for the route and then "
        "lists the models the fleet does have, so a person can fix the name. Status, dialect and "
        "shape are still compared.",
    ),
    Allow(
        "host-*", "*", frozenset({"value"}),
        "Ollama refuses foreign Host headers when it listens on loopback (DNS-rebinding "
        "protection). The router is a network service reached by name (a load balancer, Consul "
        "DNS), so it accepts them and rewrites Host to the node's own address; access to it is "
        "controlled by API keys instead.",
    ),
)
IS_ROUTER = os.environ.get("OLLAMA_CANDIDATE", "") == "router"
TOLERATED = ALLOWED + ROUTER_ALLOWED if IS_ROUTER else ALLOWED


# --- the requests -----------------------------------------------------------------------------

USER = [{"role": "user", "content": "Say hello to the mesh."}]
OPTS = {"options": GEN_OPTIONS}
V1_SAMPLING = {"max_tokens": GEN_OPTIONS["num_predict"], "temperature": 0, "seed": GEN_OPTIONS["seed"]}
PRELOAD = ("POST", "/api/generate", {"model": MODEL, "prompt": ""})
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                           "parameters": {"type": "object", "properties": {}}}}]


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    before: tuple = field(default_factory=tuple)  # (method, path, body) sent to both first, not compared
    headers: dict | None = None


def _cases() -> list[Case]:
    m, e, x = MODEL, EMBED_MODEL, MISSING
    latest = m if ":" in m else f"{m}:latest"
    cases = [
        Case("root", "GET", "/"),
        Case("root-head", "HEAD", "/"),
        Case("version", "GET", "/api/version"),
        Case("version-head", "HEAD", "/api/version"),
        Case("tags", "GET", "/api/tags"),
        Case("v1-models", "GET", "/v1/models"),
        Case("v1-model", "GET", f"/v1/models/{m}"),
        Case("show", "POST", "/api/show", {"model": m}),
        Case("show-latest", "POST", "/api/show", {"model": latest}),
        Case("preload-generate", "POST", "/api/generate", {"model": m, "prompt": ""}),
        Case("preload-generate-json", "POST", "/api/generate", {"model": m, "prompt": "", "stream": False}),
        Case("preload-chat", "POST", "/api/chat", {"model": m, "messages": []}),
        *[Case(f"keepalive-{name}", "POST", "/api/generate", {"model": m, "prompt": "", "keep_alive": value})
          for name, value in (("seconds", 600), ("duration", "10m"), ("float", 1.5), ("negative", -1),
                              ("bogus", "bogus"), ("bool", True))],
        Case("ps", "GET", "/api/ps", before=(PRELOAD,)),
        Case("generate-stream", "POST", "/api/generate", {"model": m, "prompt": "Say hello.", **OPTS}),
        Case("generate-json", "POST", "/api/generate", {"model": m, "prompt": "Say hello.", "stream": False, **OPTS}),
        Case("generate-raw", "POST", "/api/generate",
             {"model": m, "prompt": "Say hello.", "raw": True, "stream": False, **OPTS}),
        Case("generate-latest", "POST", "/api/generate",
             {"model": latest, "prompt": "Say hello.", "stream": False, **OPTS}),
        Case("chat-stream", "POST", "/api/chat", {"model": m, "messages": USER, **OPTS}),
        Case("chat-json", "POST", "/api/chat", {"model": m, "messages": USER, "stream": False, **OPTS}),
        Case("chat-latest", "POST", "/api/chat", {"model": latest, "messages": USER, **OPTS}),
        Case("embed-str", "POST", "/api/embed", {"model": e, "input": "hello"}),
        Case("embed-list", "POST", "/api/embed", {"model": e, "input": ["hello", "mesh"]}),
        Case("embeddings-legacy", "POST", "/api/embeddings", {"model": e, "prompt": "hello"}),
        Case("v1-chat", "POST", "/v1/chat/completions", {"model": m, "messages": USER, **V1_SAMPLING}),
        Case("v1-chat-stream", "POST", "/v1/chat/completions",
             {"model": m, "messages": USER, "stream": True, **V1_SAMPLING}),
        Case("v1-chat-stream-usage", "POST", "/v1/chat/completions",
             {"model": m, "messages": USER, "stream": True, "stream_options": {"include_usage": True}, **V1_SAMPLING}),
        Case("v1-completions", "POST", "/v1/completions", {"model": m, "prompt": "Once", **V1_SAMPLING}),
        Case("v1-completions-stream-usage", "POST", "/v1/completions",
             {"model": m, "prompt": "Once", "stream": True, "stream_options": {"include_usage": True}, **V1_SAMPLING}),
        Case("v1-embeddings", "POST", "/v1/embeddings", {"model": e, "input": ["hello", "mesh"]}),
        # errors: unknown model
        Case("unknown-generate", "POST", "/api/generate", {"model": x, "prompt": "hi"}),
        Case("unknown-generate-json", "POST", "/api/generate", {"model": x, "prompt": "hi", "stream": False}),
        Case("unknown-chat", "POST", "/api/chat", {"model": x, "messages": USER}),
        Case("unknown-embed", "POST", "/api/embed", {"model": x, "input": "hi"}),
        Case("unknown-embeddings", "POST", "/api/embeddings", {"model": x, "prompt": "hi"}),
        Case("unknown-show", "POST", "/api/show", {"model": x}),
        Case("unknown-v1-chat", "POST", "/v1/chat/completions", {"model": x, "messages": USER}),
        Case("unknown-v1-chat-stream", "POST", "/v1/chat/completions", {"model": x, "messages": USER, "stream": True}),
        Case("unknown-v1-completions", "POST", "/v1/completions", {"model": x, "prompt": "hi"}),
        Case("unknown-v1-embeddings", "POST", "/v1/embeddings", {"model": x, "input": "hi"}),
        Case("unknown-v1-model", "GET", f"/v1/models/{x}"),
        # errors: missing model
        Case("nomodel-generate", "POST", "/api/generate", {"prompt": "hi"}),
        Case("nomodel-chat", "POST", "/api/chat", {"messages": USER}),
        Case("nomodel-embed", "POST", "/api/embed", {"input": "hi"}),
        Case("nomodel-embeddings", "POST", "/api/embeddings", {"prompt": "hi"}),
        Case("nomodel-show", "POST", "/api/show", {}),
        Case("nomodel-v1-chat", "POST", "/v1/chat/completions", {"messages": USER}),
        Case("nomodel-v1-completions", "POST", "/v1/completions", {"prompt": "hi"}),
        Case("nomodel-v1-embeddings", "POST", "/v1/embeddings", {"input": "hi"}),
        Case("v1-chat-empty-messages", "POST", "/v1/chat/completions", {"model": m, "messages": []}),
        # errors: capabilities the model lacks (400 before the first byte)
        Case("nocap-chat-tools", "POST", "/api/chat", {"model": m, "messages": USER, "tools": TOOLS, **OPTS}),
        Case("nocap-v1-tools", "POST", "/v1/chat/completions",
             {"model": m, "messages": USER, "tools": TOOLS, **V1_SAMPLING}),
        Case("nocap-generate-think", "POST", "/api/generate", {"model": m, "prompt": "hi", "think": True, **OPTS}),
        Case("nocap-chat-think", "POST", "/api/chat", {"model": m, "messages": USER, "think": True, **OPTS}),
        Case("nocap-v1-reasoning", "POST", "/v1/chat/completions",
             {"model": m, "messages": USER, "reasoning_effort": "high", **V1_SAMPLING}),
        # errors: options and fields of the wrong type
        Case("badoption-type", "POST", "/api/generate",
             {"model": m, "prompt": "hi", "stream": False, "options": {"num_predict": "many"}}),
        Case("badtype-stream", "POST", "/api/generate", {"model": m, "prompt": "hi", "stream": "yes"}),
        Case("badtype-prompt", "POST", "/api/generate", {"model": m, "prompt": 5}),
        Case("badtype-messages", "POST", "/api/chat", {"model": m, "messages": "hi"}),
        Case("badtype-model", "POST", "/api/chat", {"model": 7, "messages": USER}),
        Case("badtype-array", "POST", "/api/generate", raw=b"[1, 2]"),
        Case("badtype-v1-messages", "POST", "/v1/chat/completions", {"model": m, "messages": "hi"}),
        # errors: bodies
        *[Case(f"badjson-{p.strip('/').replace('/', '-')}", "POST", p, raw=b'{"model": ')
          for p in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show",
                    "/v1/chat/completions", "/v1/completions", "/v1/embeddings")],
        *[Case(f"nobody-{p.strip('/').replace('/', '-')}", "POST", p, raw=b"")
          for p in ("/api/generate", "/api/chat", "/v1/chat/completions")],
        # the Host-header check of a server on loopback (403, empty body, for foreign names)
        *[Case(f"host-{name}", "GET", "/api/version", headers={"Host": host})
          for name, host in (("consul", "x.service.consul"), ("public", "example.com"),
                             ("localhost", "localhost:11434"), ("local", "node.local"), ("private-ip", "10.1.2.3"))],
        # routing
        Case("unknown-path", "GET", "/api/no-such-endpoint"),
        Case("wrong-method-generate", "GET", "/api/generate"),
        Case("wrong-method-tags", "POST", "/api/tags"),
        # model management (the copy is deleted again)
        Case("tags-head", "HEAD", "/api/tags"),
        Case("copy", "POST", "/api/copy", {"source": m, "destination": "differential-copy"}),
        Case("tags-with-copy", "GET", "/api/tags"),
        Case("delete", "DELETE", "/api/delete", {"model": "differential-copy"}),
        Case("delete-again", "DELETE", "/api/delete", {"model": "differential-copy"}),
        Case("copy-unknown", "POST", "/api/copy", {"source": x, "destination": "differential-never"}),
        Case("copy-nobody", "POST", "/api/copy", {}),
        Case("delete-nomodel", "DELETE", "/api/delete", {}),
        # unload last: it leaves the model unloaded
        Case("unload-generate", "POST", "/api/generate", {"model": m, "keep_alive": 0}, before=(PRELOAD,)),
        Case("unload-chat", "POST", "/api/chat", {"model": m, "messages": [], "keep_alive": 0, "stream": False},
             before=(PRELOAD,)),
    ]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def servers():
    with httpx.Client(base_url=REFERENCE_URL, timeout=TIMEOUT) as ref, \
         httpx.Client(base_url=CANDIDATE_URL, timeout=TIMEOUT) as cand:
        yield ref, cand


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_as_reference(servers, case: Case):
    exchanges = []
    for http in servers:
        for method, path, body in case.before:
            send(http, method, path, body)
        exchanges.append(send(http, case.method, case.path, case.body, raw=case.raw, headers=case.headers))
    ref, cand = exchanges
    diffs = compare(ref, cand)
    unexplained = [d for d in diffs if allowance(case.id, d, TOLERATED) is None]
    if unexplained:
        sent = case.body if case.raw is None else case.raw
        pytest.fail(
            f"{case.method} {case.path} {sent!r}: the candidate differs from the reference Ollama:\n  "
            + "\n  ".join(map(str, unexplained)),
            pytrace=False,
        )


def test_allow_list_is_documented():
    for a in ALLOWED + ROUTER_ALLOWED:
        assert a.kinds and len(a.why) > 40, a
