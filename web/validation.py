"""Every request checked against the OpenAPI document the service serves: one source of
truth for what an input may be.

A small validator for the part of JSON Schema the document uses (type, nullable, enum,
minimum/maximum, minLength/maxLength, pattern, required, properties, additionalProperties,
minProperties, items, oneOf, $ref) walks the operation's path and query parameters and its
JSON body. A mismatch is a 400 naming the field and the reason, before any handler runs;
handlers keep their own typed reading of the (now known-good) input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from aiohttp import web

from meterhub.i18n import _
from web.errors import BadRequest

S = Mapping[str, Any]
API_PREFIX = "/api/v1"


class Invalid(BadRequest):
    """An input the document does not allow; ``details`` carries the field and reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", details={"field": field, "reason": reason})


@dataclass(frozen=True, slots=True)
class Operation:
    params: tuple[S, ...]
    body: S | None
    body_required: bool


class Validator:
    """The operations of one OpenAPI document, ready to check requests against."""

    def __init__(self, document: S) -> None:
        self._doc = document
        self._ops: dict[tuple[str, str], Operation] = {}
        for path, item in document["paths"].items():
            for method, op in item.items():
                body = op.get("requestBody")
                schema = body["content"]["application/json"]["schema"] if body else None
                self._ops[(method.upper(), path)] = Operation(
                    tuple(op.get("parameters", ())), schema, bool(body and body["required"]))

    def operation(self, method: str, path: str) -> Operation | None:
        return self._ops.get((method, path))

    def check_params(self, op: Operation, path_values: Mapping[str, str],
                     query: Mapping[str, str]) -> None:
        for param in op.params:
            where, name = param["in"], param["name"]
            values = path_values if where == "path" else query
            if name not in values:
                if param.get("required"):
                    raise Invalid(name, _("the {where} parameter is required", where=where))
                continue
            value = _from_text(values[name], self._resolve(param["schema"]), name)
            self.check(value, param["schema"], name)

    def check_body(self, op: Operation, raw: bytes) -> None:
        if op.body is None:
            return
        if not raw.strip():
            if op.body_required:
                raise Invalid("body", _("a JSON object is required"))
            return
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Invalid("body", _("not valid JSON ({error})", error=exc)) from None
        self.check(value, op.body, "body")

    def check(self, value: Any, schema: S, field: str) -> None:
        """Raise :class:`Invalid` unless ``value`` matches ``schema``."""
        schema = self._resolve(schema)
        if value is None:
            if schema.get("nullable"):
                return
            raise Invalid(field, _("must not be null (leave it out instead)"))
        if "oneOf" in schema:
            self._one_of(value, schema["oneOf"], field)
            return
        kind = schema.get("type")
        if kind is not None and not _is_type(value, kind):
            raise Invalid(field, _("must be {kind}, got {got}", kind=_a(kind),
                                   got=_json_type(value)))
        if "enum" in schema and value not in schema["enum"]:
            raise Invalid(field, _("{value!r} is unknown; must be one of {choices}",
                                   value=str(value)[:40],
                                   choices=", ".join(map(str, schema["enum"]))))
        if isinstance(value, str):
            self._string(value, schema, field)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            _number(value, schema, field)
        elif isinstance(value, dict):
            self._object(value, schema, field)
        elif isinstance(value, list) and "items" in schema:
            for n, item in enumerate(value):
                self.check(item, schema["items"], f"{field}[{n}]")

    def _one_of(self, value: Any, options: list[S], field: str) -> None:
        """The option of the value's own type decides (its reason is the useful one)."""
        resolved = [self._resolve(o) for o in options]
        typed = [o for o in resolved if "type" not in o or _is_type(value, o["type"])]
        if not typed:
            kinds = _(" or ").join(_a(o["type"]) for o in resolved)
            raise Invalid(field, _("must be {kind}, got {got}", kind=kinds,
                                   got=_json_type(value)))
        reasons = []
        for option in typed:
            try:
                self.check(value, option, field)
            except Invalid as exc:
                reasons.append(exc.details["reason"])
            else:
                return
        raise Invalid(field, _("; or ").join(reasons))

    def _string(self, value: str, schema: S, field: str) -> None:
        if "\x00" in value:
            raise Invalid(field, _("must not contain NUL characters"))
        if len(value) < schema.get("minLength", 0):
            raise Invalid(field, _("must be at least {n} characters", n=schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise Invalid(field, _("must be at most {n} characters", n=schema["maxLength"]))
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            raise Invalid(field, _(schema["x-pattern-text"]) if "x-pattern-text" in schema
                          else _("must match the pattern {pattern}", pattern=schema["pattern"]))

    def _object(self, value: dict[str, Any], schema: S, field: str) -> None:
        props: S = schema.get("properties", {})
        prefix = "" if field == "body" else f"{field}."
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise Invalid(prefix + missing[0], _("is required"))
        if len(value) < schema.get("minProperties", 0):
            raise Invalid(field, _("needs at least {n} of {names}", n=schema["minProperties"],
                                   names=", ".join(props)))
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                self.check(item, props[key], prefix + key)
            elif extra is False:
                raise Invalid(prefix + key, _("unknown field (expected {names})",
                                              names=", ".join(props) or _("none")))
            elif isinstance(extra, Mapping):
                self.check(item, extra, prefix + key)

    def _resolve(self, schema: S) -> S:
        while "$ref" in schema:
            node: Any = self._doc
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema


def _a(kind: str) -> str:
    """A JSON type as a person names it, in the reader's language."""
    return {"string": _("a string"), "integer": _("a whole number"), "number": _("a number"),
            "boolean": _("true or false"), "object": _("a JSON object"),
            "array": _("a JSON array")}[kind]


def _json_type(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "object", "array"):
        if _is_type(value, kind):
            return _a(kind)
    return "null"


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return {"string": isinstance(value, str), "integer": isinstance(value, int),
            "number": isinstance(value, int | float), "object": isinstance(value, dict),
            "array": isinstance(value, list)}.get(kind, False)


def _number(value: float, schema: S, field: str) -> None:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            raise Invalid(field, _("must be between {lo} and {hi}, got {value}", lo=lo, hi=hi,
                                   value=value))
        raise Invalid(field, _("must be at least {lo}", lo=lo) if lo is not None
                      else _("must be at most {hi}", hi=hi))


_INTEGER = re.compile(r"-?[0-9]{1,30}")


def _from_text(raw: str, schema: S, field: str) -> Any:
    """A path or query value as the type its schema wants."""
    kind = schema.get("type")
    if kind == "integer":
        if not _INTEGER.fullmatch(raw):
            raise Invalid(field, _("must be a whole number, got {raw!r}", raw=raw[:40]))
        return int(raw)
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise Invalid(field, _("must be true or false, got {raw!r}", raw=raw[:40]))
        return raw == "true"
    return raw


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


VALIDATOR_KEY: web.AppKey[Validator] = web.AppKey("validator", Validator)


@web.middleware
async def middleware(request: web.Request,
                     handler: Any) -> web.StreamResponse:
    """Check the request against its operation in the document before the handler runs."""
    route = request.match_info.route.resource
    validator = request.app.get(VALIDATOR_KEY)
    if route is None or validator is None or not request.path.startswith(API_PREFIX):
        return await handler(request)
    op = validator.operation(request.method,
                             route.canonical.removeprefix(API_PREFIX))
    if op is not None:
        validator.check_params(op, request.match_info, request.query)
        if op.body is not None:
            validator.check_body(op, await request.read())
    return await handler(request)
