"""Raw-HTTP helpers shared by the conformance and differential tests.

They parse what goes over the wire (NDJSON lines, SSE events) strictly, so that framing bugs
fail loudly instead of being smoothed over by a client library.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

# Duration and count fields of a final NDJSON chunk / a non-streamed native response.
# Durations are integers in nanoseconds.
DURATION_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
COUNT_FIELDS = ("prompt_eval_count", "eval_count")
GENERATION_DONE_REASONS = {"stop", "length"}

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Small, deterministic generations: the tests never depend on the text, only on its framing.
GEN_OPTIONS = {"num_predict": 8, "temperature": 0, "seed": 7}


@dataclass
class Exchange:
    """One HTTP request and everything about its response that the tests look at."""

    method: str
    path: str
    status: int
    headers: httpx.Headers
    body: bytes
    chunks: list[Any] = field(default_factory=list)  # parsed NDJSON lines or SSE payloads

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    http: httpx.Client,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Exchange:
    """Send a request and read the whole response; parse it as NDJSON or SSE when it is one."""
    content = raw
    headers = dict(headers or {})
    if body is not None:
        content = json.dumps(body).encode()
    if content is not None:
        headers["content-type"] = "application/json"
    resp = http.request(method, path, content=content, headers=headers)
    ex = Exchange(method, path, resp.status_code, resp.headers, resp.content)
    if ex.media_type == "application/x-ndjson":
        ex.chunks = parse_ndjson(ex.body)
    elif ex.media_type == "text/event-stream":
        ex.chunks = parse_sse(ex.body)
    return ex


def parse_ndjson(body: bytes) -> list[dict]:
    """Split an NDJSON body: every line one JSON object, every line (the last too) ending in \\n."""
    assert body, "empty NDJSON body"
    text = body.decode("utf-8")
    assert text.endswith("\n"), f"NDJSON body does not end with a newline: {text[-80:]!r}"
    objects = []
    for i, line in enumerate(text[:-1].split("\n")):
        assert line.strip(), f"blank line {i} in NDJSON body"
        obj = json.loads(line)
        assert isinstance(obj, dict), f"NDJSON line {i} is not an object: {line!r}"
        objects.append(obj)
    return objects


DONE = "[DONE]"


def parse_sse(body: bytes) -> list[Any]:
    """Split an OpenAI-style SSE body into payloads: parsed JSON objects, then the string [DONE].

    Each event must be exactly `data: <payload>` followed by a blank line.
    """
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), f"SSE body does not end with a blank line: {text[-80:]!r}"
    events = []
    for i, block in enumerate(text[:-2].split("\n\n")):
        assert block.startswith("data: "), f"SSE event {i} is not a data line: {block!r}"
        assert "\n" not in block, f"SSE event {i} spans several lines: {block!r}"
        payload = block[len("data: ") :]
        if payload == DONE:
            events.append(DONE)
            continue
        obj = json.loads(payload)
        assert isinstance(obj, dict), f"SSE event {i} is not a JSON object: {payload!r}"
        events.append(obj)
    assert events and events[-1] == DONE, "SSE stream does not end with data: [DONE]"
    assert events.count(DONE) == 1, "data: [DONE] appears more than once"
    return events


RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")


def assert_rfc3339(value: Any) -> None:
    """Go's RFC3339 / RFC3339Nano: up to 9 fractional digits, then "Z" or a numeric offset."""
    assert isinstance(value, str), f"timestamp is not a string: {value!r}"
    m = RFC3339.match(value)
    assert m, f"not an RFC3339 timestamp: {value!r}"
    frac = (m.group(2) or "")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def assert_metrics(obj: dict) -> None:
    """The duration (ns) and count fields of a finished native response.

    Ollama omits a field when it is 0 (`omitempty`); a present one is a non-negative integer.
    `total_duration` and `eval_count` are always there after generation.
    """
    for key in DURATION_FIELDS + COUNT_FIELDS:
        if key in obj:
            assert is_int(obj[key]) and obj[key] >= 0, f"{key} is not a non-negative integer: {obj[key]!r}"
    assert is_int(obj.get("total_duration")) and obj["total_duration"] > 0, obj
    assert obj["total_duration"] >= obj.get("eval_duration", 0), "total_duration < eval_duration"
    assert obj["total_duration"] >= obj.get("prompt_eval_duration", 0), "total_duration < prompt_eval_duration"
