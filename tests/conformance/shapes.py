"""Recursive "shape" of JSON values, and the differences between two shapes.

A shape keeps what clients depend on (keys, value types, nesting) and drops the values, so two
servers that generate different text and timings still have equal shapes.
"""

from __future__ import annotations

from typing import Any

Shape = Any  # str for scalars, dict[str, Shape] for objects, ("list", Shape | None) for arrays


def shape(value: Any) -> Shape:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return ("list", _merge([shape(v) for v in value]))
    raise TypeError(f"not a JSON value: {value!r}")


def _merge(shapes: list[Shape]) -> Shape:
    """One shape for the elements of an array (None for an empty array).

    Integers and floats mix in float arrays (Go writes an f32 0.0 as `0`), so an array holding
    both is an array of floats. Any other mix is kept as a sorted "mixed" marker.
    """
    if not shapes:
        return None
    distinct: list[Shape] = []
    for s in shapes:
        if s not in distinct:
            distinct.append(s)
    if len(distinct) == 1:
        return distinct[0]
    if set(map(repr, distinct)) == {"'int'", "'float'"}:
        return "float"
    return ("mixed", tuple(sorted(map(repr, distinct))))


def describe(s: Shape) -> str:
    if isinstance(s, dict):
        return "object"
    if isinstance(s, tuple) and s[0] == "list":
        return "array"
    return str(s)


def diff(reference: Shape, candidate: Shape, path: str = "$") -> list[tuple[str, str, str]]:
    """Differences as (path, kind, detail), kind one of "missing", "extra", "type".

    "missing": the reference has the key, the candidate not; "extra": the other way round.
    An empty array matches an array of anything (its element type is unknown).
    """
    out: list[tuple[str, str, str]] = []
    if isinstance(reference, dict) and isinstance(candidate, dict):
        for key in reference:
            sub = f"{path}.{key}"
            if key not in candidate:
                out.append((sub, "missing", f"reference has {describe(reference[key])}"))
            else:
                out.extend(diff(reference[key], candidate[key], sub))
        for key in candidate:
            if key not in reference:
                out.append((f"{path}.{key}", "extra", f"candidate has {describe(candidate[key])}"))
        return out
    if _is_list(reference) and _is_list(candidate):
        if reference[1] is None or candidate[1] is None:
            return out
        return diff(reference[1], candidate[1], f"{path}[]")
    if reference != candidate:
        out.append((path, "type", f"reference {describe(reference)}, candidate {describe(candidate)}"))
    return out


def _is_list(s: Shape) -> bool:
    return isinstance(s, tuple) and len(s) == 2 and s[0] == "list"


def merge(a: Shape, b: Shape) -> Shape:
    """The union of two shapes: an object has every key either has (for chunks of one kind)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(out[key], value) if key in out else value
        return out
    if _is_list(a) and _is_list(b):
        if a[1] is None:
            return b
        if b[1] is None:
            return a
        return ("list", merge(a[1], b[1]))
    if a == b:
        return a
    return ("mixed", tuple(sorted({repr(a), repr(b)})))


def leaves(value: Any, path: str = "$"):
    """(path, value) of every scalar in a JSON value; array elements share the path `[]`."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from leaves(sub, f"{path}.{key}")
    elif isinstance(value, list):
        for sub in value:
            yield from leaves(sub, f"{path}[]")
    else:
        yield path, value
