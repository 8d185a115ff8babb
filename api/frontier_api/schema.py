"""Typed API models that are also their own OpenAPI schema.

A Kubernetes API type is described three times in most projects: the Go/Python struct, the CRD's OpenAPI v3
schema, and the parser between them. Here the Python dataclass is the only description. Each field carries
its documentation and constraints in `dataclasses.field` metadata (built with `prop`); `openapi` turns a model
class into a *structural* schema (every property typed, defaults and enums included, CEL rules attached), and
`parse` turns an object the API server returned (camelCase JSON) back into the frozen dataclasses, filling the
same defaults and naming the offending field when something does not fit.

Supported field types: `str`, `int`, `float`, `bool`, `enum.StrEnum` subclasses, nested model dataclasses,
`list[T]`, `dict[str, str]`, `IntOrString`, free-form `FreeForm` objects (passed through untouched, e.g.
Kubernetes tolerations), and `T | None` for optional fields. Python snake_case names become camelCase.
"""

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Final, TypeVar

# A Kubernetes quantity or port: either an integer or a string ("500m", "16Gi").
IntOrString = int | str
# An object the API server keeps as-is (x-kubernetes-preserve-unknown-fields): tolerations, affinity.
FreeForm = dict[str, Any]

_META_KEY: Final = "frontier_schema"
M = TypeVar("M")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """A CEL validation rule (x-kubernetes-validations) checked by the API server on a model object."""

    rule: str
    message: str
    field_path: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constraints:
    """What a field's metadata says beyond its type."""

    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    max_items: int | None = None
    pattern: str | None = None


class ParseError(ValueError):
    """An object does not fit its model; `path` names the field in the API's camelCase spelling."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def prop(
    description: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    min_length: int | None = None,
    max_length: int | None = None,
    max_items: int | None = None,
    pattern: str | None = None,
) -> Any:
    """A model field with its documentation and constraints (the dataclass default is the schema default)."""
    constraints = Constraints(
        description=description,
        minimum=minimum,
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
        min_length=min_length,
        max_length=max_length,
        max_items=max_items,
        pattern=pattern,
    )
    metadata = {_META_KEY: constraints}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def camel(name: str) -> str:
    """The API spelling of a Python attribute name: `max_model_len` -> `maxModelLen`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _constraints(field: dataclasses.Field[Any]) -> Constraints:
    found = field.metadata.get(_META_KEY)
    if not isinstance(found, Constraints):
        raise TypeError(f"field {field.name} has no description; declare it with schema.prop(...)")
    return found


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if set(args) == {int, str}:
            return IntOrString, optional
        if len(args) == 1:
            return args[0], optional
        raise TypeError(f"unsupported union {tp}")
    return tp, False


def _rules(cls: type) -> tuple[Rule, ...]:
    found = cls.__dict__.get("__cel__", ())
    return tuple(found)


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp is IntOrString:
        return {"x-kubernetes-int-or-string": True}
    if tp is FreeForm or tp == dict[str, Any]:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return openapi(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _type_schema(item)}
    if origin is dict:
        key, value = typing.get_args(tp)
        if key is not str:
            raise TypeError(f"map keys must be strings: {tp}")
        return {"type": "object", "additionalProperties": _type_schema(value)}
    raise TypeError(f"unsupported field type {tp}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def openapi(cls: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model class (with CEL rules and defaults)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        c = _constraints(field)
        tp, _optional = _strip_optional(hints[field.name])
        schema = {**_type_schema(tp), "description": c.description}
        if field.default is not dataclasses.MISSING and field.default is not None:
            schema["default"] = _jsonable(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            # An empty object lets the API server fill the nested fields' own defaults.
            made = field.default_factory()
            schema["default"] = {} if dataclasses.is_dataclass(made) else _jsonable(made)
        elif field.default is dataclasses.MISSING:
            required.append(camel(field.name))
        for key, value in (
            ("minimum", c.minimum),
            ("maximum", c.maximum),
            ("minLength", c.min_length),
            ("maxLength", c.max_length),
            ("maxItems", c.max_items),
            ("pattern", c.pattern),
        ):
            if value is not None:
                schema[key] = value
        if c.exclusive_minimum:
            schema["exclusiveMinimum"] = True
        properties[camel(field.name)] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties}
    doc = (cls.__doc__ or "").strip()
    if doc:
        out = {"description": doc, **out}
    if required:
        out["required"] = required
    rules = _rules(cls)
    if rules:
        out["x-kubernetes-validations"] = [
            {"rule": r.rule, "message": r.message, **({"fieldPath": r.field_path} if r.field_path else {})}
            for r in rules
        ]
    return out


def _parse_value(tp: Any, value: Any, path: str) -> Any:
    if tp is IntOrString:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ParseError(path, f"expected an integer or a string, got {value!r}")
        return value
    if tp is FreeForm or tp == dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ParseError(path, f"expected an object, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise ParseError(path, f"unknown value {value!r}; allowed: {allowed}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ParseError(path, f"expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParseError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParseError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParseError(path, f"expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return parse(tp, value, path=path)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParseError(path, f"expected a list, got {value!r}")
        return [_parse_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ParseError(path, f"expected an object, got {value!r}")
        return {str(k): _parse_value(item, v, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported field type {tp}")


def _check(c: Constraints, value: Any, path: str) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if c.minimum is not None and (value < c.minimum or (c.exclusive_minimum and value == c.minimum)):
            raise ParseError(path, f"{value} is below the minimum {c.minimum}")
        if c.maximum is not None and value > c.maximum:
            raise ParseError(path, f"{value} is above the maximum {c.maximum}")
    if isinstance(value, str):
        if c.min_length is not None and len(value) < c.min_length:
            raise ParseError(path, f"must be at least {c.min_length} characters")
        if c.max_length is not None and len(value) > c.max_length:
            raise ParseError(path, f"must be at most {c.max_length} characters")
    if isinstance(value, list) and c.max_items is not None and len(value) > c.max_items:
        raise ParseError(path, f"at most {c.max_items} items allowed")


# Resolved field types per model: resolving annotations dominated parsing (the operator parses every spec).
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def parse(cls: type[M], data: Any, *, path: str = "spec") -> M:
    """A model instance from API JSON; missing fields take the model's defaults, unknown ones are dropped
    (the API server prunes them too)."""
    if not isinstance(data, Mapping):
        raise ParseError(path, f"expected an object, got {data!r}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = camel(field.name)
        sub = f"{path}.{key}"
        if key not in data or data[key] is None:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ParseError(sub, "is required")
            continue
        tp, _ = _strip_optional(hints[field.name])
        value = _parse_value(tp, data[key], sub)
        _check(_constraints(field), value, sub)
        kwargs[field.name] = value
    return cls(**kwargs)


def dump(obj: Any) -> dict[str, Any]:
    """The API JSON of a model instance (camelCase, enums as strings, unset optionals left out)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if value is None:
            continue
        out[camel(field.name)] = _jsonable(value)
    return out


class Model:
    """Marker base for model dataclasses: CEL rules live in `__cel__`."""

    __cel__: ClassVar[tuple[Rule, ...]] = ()
