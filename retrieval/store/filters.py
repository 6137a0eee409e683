"""Search and listing filters as users write them (JSON), parsed into ``model.Filter``.

    {"doc_id": "ab12..." | ["ab12...", "cd34..."],
     "source": "report.pdf",
     "page": 3 | [1, 2] | {"gte": 1, "lte": 10},
     "metadata": {"year": {"gte": 2020}, "lang": ["en", "fr"], "team": "finance"}}

A scalar means equality, a list means any-of, an object with gt/gte/lt/lte means a range.
``"metadata.year": ...`` at the top level is the same as nesting it under ``metadata``.

Everything is checked here, before it reaches Qdrant: ``doc_id`` and ``source`` take strings,
``page`` integers, integers fit Qdrant's signed 64 bits, range bounds are finite numbers. A
filter that breaks a rule is an ``InvalidInput`` naming the key, never a store error.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from retrieval.errors import InvalidInput
from retrieval.store.model import Condition, Filter, Match, MatchAny, Range

Kind = Literal["string", "integer", "any"]
TOP_LEVEL: dict[str, tuple[str, Kind]] = {
    "doc_id": ("doc_id", "string"),
    "source": ("source", "string"),
    "page": ("page", "integer"),
}
RANGE_OPS = {"gt", "gte", "lt", "lte"}
# Integers the store keeps (signed 64 bits), less a margin a JSON Schema validator reads
# exactly as a double: the API's schema declares these very bounds.
INT64 = (-(2**63) + 1024, 2**63 - 1024)
MAX_CONDITIONS = 64
MAX_VALUES = 1024


_INT64 = {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]}
_RANGE = {
    "type": "object",
    "description": "A range: any of gt, gte, lt, lte, each a finite number.",
    "properties": {op: {"type": "number"} for op in sorted(RANGE_OPS)},
    "additionalProperties": False,
    "minProperties": 1,
}
_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_VALUES}
_INTEGERS = {"type": "array", "items": _INT64, "minItems": 1, "maxItems": MAX_VALUES}
_ANY_VALUE = {
    "description": "A string, integer or boolean (equality), a list of only strings or only "
    "integers (any of them), or a range.",
    "anyOf": [{"type": "string"}, _INT64, {"type": "boolean"}, _STRINGS, _INTEGERS, _RANGE],
}
_KEY = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$"
# The rules above, as the API's OpenAPI schema declares them.
FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Conditions every result meets (all of them). A scalar means equality, a "
    "list any of, an object with gt/gte/lt/lte a range; at most "
    f"{MAX_CONDITIONS} conditions, {MAX_VALUES} values a list, integers within 64 bits.",
    "properties": {
        "doc_id": {"anyOf": [{"type": "string"}, _STRINGS]},
        "source": {"anyOf": [{"type": "string"}, _STRINGS]},
        "page": {"anyOf": [_INT64, _INTEGERS, _RANGE]},
        "metadata": {
            "type": "object",
            "propertyNames": {"pattern": _KEY, "maxLength": 247},
            "additionalProperties": _ANY_VALUE,
            "maxProperties": MAX_CONDITIONS,
        },
    },
    "patternProperties": {"^metadata\\.[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$": _ANY_VALUE},
    "additionalProperties": False,
}


def parse_filter_json(text: str | None, *, what: str = "filter") -> Filter | None:
    """A filter given as JSON text (query strings, CLI flags)."""
    return parse_filter(parse_json(text, what=what)) if text else None


def parse_json(text: str, *, what: str) -> Any:
    """JSON a user sent, strictly: NaN and Infinity (which Python's json accepts) are refused."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_filter(spec: Any) -> Filter | None:
    """Parse a user filter; raises ``InvalidInput`` naming the offending key."""
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise InvalidInput("filter must be a JSON object")
    conditions: list[Condition] = []
    for key, value in spec.items():
        if key == "metadata":
            if not isinstance(value, dict):
                raise InvalidInput("filter.metadata must be an object of key: condition")
            conditions += [_condition(f"metadata.{k}", v, "any") for k, v in value.items()]
        elif key.startswith("metadata.") and len(key) > len("metadata."):
            conditions.append(_condition(key, value, "any"))
        elif key in TOP_LEVEL:
            field, kind = TOP_LEVEL[key]
            conditions.append(_condition(field, value, kind))
        else:
            raise InvalidInput(
                f"unknown filter key '{key}': use doc_id, source, page or metadata.<key>"
            )
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidInput(f"filter has {len(conditions)} conditions; at most {MAX_CONDITIONS}")
    return Filter(tuple(conditions))


def _condition(key: str, value: Any, kind: Kind) -> Condition:
    _check_key(key)
    if isinstance(value, list):
        return _any_of(key, value, kind)
    if isinstance(value, dict):
        return _range(key, value, kind)
    return Match(key, _scalar(key, value, kind))


def _scalar(key: str, value: Any, kind: Kind) -> str | int | bool:
    if kind == "string" and not isinstance(value, str):
        raise InvalidInput(f"filter '{key}': expected a string, got {_shown(value)}")
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidInput(f"filter '{key}': expected an integer, got {_shown(value)}")
    if isinstance(value, float) and value.is_integer() and kind != "string":
        value = int(value)  # 524.0 is the integer JSON Schema says it is
    if isinstance(value, float):
        raise InvalidInput(
            f"filter '{key}': match a number with a fraction by a range, e.g. "
            f'{{"gte": {value}, "lte": {value}}}'
        )
    if isinstance(value, int) and not isinstance(value, bool):
        _check_int(key, value)
        return value
    if isinstance(value, bool | str):
        return value
    raise InvalidInput(f"filter '{key}': unsupported value {_shown(value)}")


def _any_of(key: str, values: list, kind: Kind) -> MatchAny:
    if not values:
        raise InvalidInput(f"filter '{key}': the list of values is empty")
    if len(values) > MAX_VALUES:
        raise InvalidInput(f"filter '{key}': {len(values)} values; at most {MAX_VALUES}")
    strings = all(isinstance(v, str) for v in values)
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if (kind == "string" and not strings) or (kind == "integer" and not integers):
        raise InvalidInput(f"filter '{key}': a list here must hold only {kind}s")
    if not (strings or integers):
        raise InvalidInput(f"filter '{key}': a list must hold only strings or only integers")
    for v in values:
        if integers:
            _check_int(key, v)
    return MatchAny(key, tuple(values))


def _range(key: str, bounds: dict, kind: Kind) -> Range:
    unknown = set(bounds) - RANGE_OPS
    if unknown or not bounds:
        raise InvalidInput(f"filter '{key}': a range takes gt, gte, lt, lte; got {sorted(bounds)}")
    if kind == "string":
        raise InvalidInput(f"filter '{key}': a range needs a number field")
    for op, bound in bounds.items():
        where = f"filter '{key}.{op}'"
        if not isinstance(bound, int | float) or isinstance(bound, bool):
            raise InvalidInput(f"{where}: the bound must be a number, got {_shown(bound)}")
        if isinstance(bound, int):
            _check_int(f"{key}.{op}", bound)
        elif not math.isfinite(bound):
            raise InvalidInput(f"{where}: the bound must be a finite number, got {bound}")
    return Range(key, **{op: float(b) for op, b in bounds.items()})


def _check_int(key: str, value: int) -> None:
    if not INT64[0] <= value <= INT64[1]:
        raise InvalidInput(
            f"filter '{key}': {_shown(value)} is outside the 64-bit integer range the store keeps"
        )


def _check_key(key: str) -> None:
    parts = key.split(".")
    if len(key) > 256 or any(
        not p or not p.replace("_", "").replace("-", "").isalnum() for p in parts
    ):
        raise InvalidInput(f"filter key '{key[:64]}' may hold only letters, digits, '_', '-', '.'")


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, int | float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_metadata(metadata: Any, *, where: str = "metadata") -> dict[str, Any]:
    """Metadata kept with a document: a JSON object the store can hold and filters can match
    (integers within 64 bits, finite numbers, at most 64 KB as JSON)."""
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    _check_value(metadata, where, depth=0)
    if len(json.dumps(metadata)) > 65536:
        raise InvalidInput(f"{where} is larger than 64 KB as JSON")
    return metadata


def _check_value(value: Any, where: str, depth: int) -> None:
    if depth > 16:
        raise InvalidInput(f"{where}: nested deeper than 16 levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise InvalidInput(f"{where}: {_shown(value)} is outside the 64-bit integer range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: {value} is not a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(f"{where}: keys must be strings")
            _check_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1)
    else:
        raise InvalidInput(f"{where}: unsupported value {_shown(value)}")
