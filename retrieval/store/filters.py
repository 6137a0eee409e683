"""Search and listing filters as users write them (JSON), parsed into ``model.Filter``.

    {"doc_id": "ab12..." | ["ab12...", "cd34..."],
     "source": "report.pdf",
     "page": 3 | {"gte": 1, "lte": 10},
     "metadata": {"year": {"gte": 2020}, "lang": ["en", "fr"], "team": "finance"}}

A scalar means equality, a list means any-of, an object with gt/gte/lt/lte means a range.
``"metadata.year": ...`` at the top level is the same as nesting it under ``metadata``.
"""

from __future__ import annotations

from typing import Any

from retrieval.errors import InvalidInput
from retrieval.store.model import Condition, Filter, Match, MatchAny, Range

TOP_LEVEL = {"doc_id": "doc_id", "source": "source", "page": "page"}
RANGE_OPS = {"gt", "gte", "lt", "lte"}


def parse_filter(spec: dict[str, Any] | None) -> Filter | None:
    """Parse a user filter; raises ``InvalidInput`` naming the offending key."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise InvalidInput("filter must be a JSON object")
    conditions: list[Condition] = []
    for key, value in spec.items():
        if key == "metadata":
            if not isinstance(value, dict):
                raise InvalidInput("filter.metadata must be an object of key: condition")
            conditions += [_condition(f"metadata.{k}", v) for k, v in value.items()]
        elif key.startswith("metadata.") and len(key) > len("metadata."):
            conditions.append(_condition(key, value))
        elif key in TOP_LEVEL:
            conditions.append(_condition(TOP_LEVEL[key], value))
        else:
            raise InvalidInput(
                f"unknown filter key '{key}': use doc_id, source, page or metadata.<key>"
            )
    return Filter(tuple(conditions))


def _condition(key: str, value: Any) -> Condition:
    _check_key(key)
    if isinstance(value, bool | str | int):
        return Match(key, value)
    if isinstance(value, float):
        raise InvalidInput(f"filter '{key}': match a float with a range, e.g. {{'gte': {value}}}")
    if isinstance(value, list):
        if not value:
            raise InvalidInput(f"filter '{key}': the list of values is empty")
        if all(isinstance(v, str) for v in value) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return MatchAny(key, tuple(value))
        raise InvalidInput(f"filter '{key}': a list must hold only strings or only integers")
    if isinstance(value, dict):
        unknown = set(value) - RANGE_OPS
        if unknown or not value:
            raise InvalidInput(
                f"filter '{key}': a range takes gt, gte, lt, lte; got {sorted(value)}"
            )
        for op, bound in value.items():
            if not isinstance(bound, int | float) or isinstance(bound, bool):
                raise InvalidInput(f"filter '{key}.{op}': bound must be a number")
        return Range(key, **{op: float(b) for op, b in value.items()})
    raise InvalidInput(f"filter '{key}': unsupported value {value!r}")


def _check_key(key: str) -> None:
    parts = key.split(".")
    if any(not p or not p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise InvalidInput(f"filter key '{key}' may hold only letters, digits, '_', '-' and '.'")
