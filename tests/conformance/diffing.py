"""Comparison of two servers' answers to the same request (used by test_differential.py).

What is compared, and how the allow-list of tolerated differences is matched, is described in
test_differential.py; this module holds the machinery so that it can be tested on its own
(test_diffing.py) without any server.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from shapes import diff as shape_diff
from shapes import leaves, merge, shape
from wire import DONE, Exchange

# Values that clients branch on; compared wherever both sides have the key.
PINNED_KEYS = {"done", "done_reason", "object", "role", "finish_reason", "system_fingerprint", "model", "index",
               "format", "owned_by"}
STREAM_TYPES = {"application/x-ndjson", "text/event-stream"}


@dataclass(frozen=True)
class Allow:
    cases: str  # fnmatch patterns over case ids, separated by spaces
    where: str  # fnmatch pattern over difference locations
    kinds: frozenset[str]
    why: str
    values: frozenset | None = None  # if set: tolerated only when both sides' values are in it
    reference: frozenset | None = None  # if set: tolerated only when the reference's value is in it


@dataclass(frozen=True)
class Diff:
    where: str
    kind: str  # header | header-params | framing | missing | extra | type | value | sequence | presence
    reference: Any
    candidate: Any

    def __str__(self) -> str:
        if self.kind in ("missing", "extra", "type"):
            return f"{self.where}: {self.kind}: {self.reference}"
        return f"{self.where}: {self.kind}: reference={_show(self.reference)} candidate={_show(self.candidate)}"


def _show(v: Any) -> str:
    if isinstance(v, frozenset):
        return repr(next(iter(v))) if len(v) == 1 else repr(sorted(v, key=repr))
    return repr(v)


def allowance(case_id: str, d: Diff, allowed: tuple[Allow, ...]) -> Allow | None:
    for a in allowed:
        if d.kind not in a.kinds or not fnmatchcase(d.where, a.where):
            continue
        if not any(fnmatchcase(case_id, pattern) for pattern in a.cases.split()):
            continue
        if a.values is not None:
            vals = _as_set(d.reference) | _as_set(d.candidate)
            if not vals <= a.values:
                continue
        if a.reference is not None and not _as_set(d.reference) <= a.reference:
            continue
        return a
    return None


def _as_set(v: Any) -> set:
    return set(v) if isinstance(v, (set, frozenset)) else {v}


# --- comparison -------------------------------------------------------------------------------


def compare_json(ref: Any, cand: Any, prefix: str = "", *, all_values: bool = False) -> list[Diff]:
    out = [Diff(_at(prefix, path), kind, detail, None) for path, kind, detail in shape_diff(shape(ref), shape(cand))]
    ref_vals, cand_vals = _values(ref), _values(cand)
    for path in sorted(ref_vals.keys() & cand_vals.keys()):
        if (all_values or path.rsplit(".", 1)[-1].rstrip("[]") in PINNED_KEYS) and ref_vals[path] != cand_vals[path]:
            out.append(Diff(_at(prefix, path), "value", ref_vals[path], cand_vals[path]))
    return out


def _at(prefix: str, path: str) -> str:
    """Location of a difference: a JSON path ("$.a.b"), or one inside a kind of stream chunk
    ("chunk:final.done_reason", "chunk:content[].message.role" for the list of content chunks)."""
    return prefix + path[1:] if prefix else path


def _values(obj: Any) -> dict[str, frozenset]:
    acc: dict[str, set] = {}
    for path, value in leaves(obj):
        acc.setdefault(path, set()).add(value)
    return {p: frozenset(v) for p, v in acc.items()}


def chunk_kind(chunk: Any) -> str:
    if chunk == DONE:
        return "[DONE]"
    if "error" in chunk:
        return "error"
    if "done" in chunk:
        return "final" if chunk["done"] else "content"
    choices = chunk.get("choices")
    if choices == []:
        return "usage"
    if choices and choices[0].get("finish_reason") is not None:
        return "finish"
    return "content"


def _collapse(kinds: list[str]) -> list[str]:
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


def compare_stream(ref: list[Any], cand: list[Any]) -> list[Diff]:
    out: list[Diff] = []
    ref_kinds, cand_kinds = [chunk_kind(c) for c in ref], [chunk_kind(c) for c in cand]
    ref_content = [c for c, k in zip(ref, ref_kinds) if k == "content"]
    cand_content = [c for c, k in zip(cand, cand_kinds) if k == "content"]

    if bool(ref_content) != bool(cand_content):
        out.append(Diff("chunk:content", "presence", len(ref_content), len(cand_content)))
        seq_ref = _collapse([k for k in ref_kinds if k != "content"])
        seq_cand = _collapse([k for k in cand_kinds if k != "content"])
    else:
        seq_ref, seq_cand = _collapse(ref_kinds), _collapse(cand_kinds)
    if seq_ref != seq_cand:
        out.append(Diff("stream", "sequence", seq_ref, seq_cand))
        return out

    ref_struct = [c for c, k in zip(ref, ref_kinds) if k not in ("content", "[DONE]")]
    cand_struct = [c for c, k in zip(cand, cand_kinds) if k not in ("content", "[DONE]")]
    for r, c in zip(ref_struct, cand_struct):
        out.extend(compare_json(r, c, f"chunk:{chunk_kind(r)}"))

    if ref_content and cand_content:
        # Content chunks: compare the union of their shapes and the set of pinned values.
        ref_shape, cand_shape = shape(ref_content[0]), shape(cand_content[0])
        for c in ref_content[1:]:
            ref_shape = merge(ref_shape, shape(c))
        for c in cand_content[1:]:
            cand_shape = merge(cand_shape, shape(c))
        out.extend(Diff(_at("chunk:content", p), k, d, None) for p, k, d in shape_diff(ref_shape, cand_shape))
        out.extend(
            d for d in compare_json(ref_content, cand_content, "chunk:content") if d.kind == "value"
        )
    return out


def compare(ref: Exchange, cand: Exchange) -> list[Diff]:
    if ref.status != cand.status:
        return [Diff("status", "value", ref.status, cand.status)] + (
            [Diff("body", "value", ref.body[:300], cand.body[:300])]
        )
    out: list[Diff] = []
    if ref.media_type != cand.media_type:
        out.append(Diff("header:content-type", "header", ref.content_type, cand.content_type))
    elif ref.content_type != cand.content_type:  # same media type, different parameters (charset)
        out.append(Diff("header:content-type", "header-params", ref.content_type, cand.content_type))
    if ref.media_type in STREAM_TYPES:
        if not cand.chunked or "content-length" in cand.headers:
            out.append(Diff("header:transfer-encoding", "framing", "chunked",
                            dict(cand.headers).get("transfer-encoding") or f"content-length {cand.headers.get('content-length')}"))
    elif ("content-length" in ref.headers) != ("content-length" in cand.headers):
        out.append(Diff("header:content-length", "framing",
                        ref.headers.get("content-length", "chunked"), cand.headers.get("content-length", "chunked")))
    if ref.method == "HEAD":
        if ref.body != cand.body:
            out.append(Diff("body", "value", ref.body, cand.body))
        return out
    if ref.media_type != cand.media_type:
        return out  # bodies of different types are not comparable; the header difference says it
    if ref.media_type == "application/json":
        out.extend(compare_json(ref.json(), cand.json(), all_values=ref.status >= 400))
    elif ref.media_type in STREAM_TYPES:
        out.extend(compare_stream(ref.chunks, cand.chunks))
    elif ref.body != cand.body:
        out.append(Diff("body", "value", ref.body[:300], cand.body[:300]))
    return out
