"""Typed tools: an OpenAI function-calling schema, a checker for its arguments, and a dispatcher.

Contract: `ToolTable.call(name, arguments)` always returns a string for the model and never raises
for anything the model sends. An unknown tool, a missing or extra argument, a wrong JSON type, a
value outside an `enum`, or a string longer than its `maxLength` (default `MAX_ARG_CHARS`) becomes an
`error: ...` string naming the problem, and the tool function is not called. A tool function
signals a domain failure (no such order, a policy forbids it) by raising `ToolError`; its message
is shown to the model. Results longer than `MAX_RESULT_CHARS` are cut, so one call cannot flood
the context.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

MAX_ARG_CHARS = 4096
MAX_RESULT_CHARS = 8192
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class ToolError(Exception):
    """A domain failure of a tool call, reported to the model as an error observation."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of an object
    fn: Callable[..., Any | Awaitable[Any]]

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def params(required: list[str] | None = None, **properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema; every property is required unless `required` says otherwise."""
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required, "additionalProperties": False}


def check_value(value: Any, schema: dict[str, Any], where: str) -> str | None:
    """The first problem of `value` against a (small subset of) JSON schema, or None."""
    kind = schema.get("type")
    if kind is not None:
        allowed = _JSON_TYPES[kind]
        # bool is an int in Python but not in JSON
        if not isinstance(value, allowed) or (kind in ("integer", "number") and isinstance(value, bool)):
            return f"{where} must be of type {kind}, got {type(value).__name__}"
    if isinstance(value, str) and len(value) > schema.get("maxLength", MAX_ARG_CHARS):
        return f"{where} is {len(value)} characters long, more than the limit of {schema.get('maxLength', MAX_ARG_CHARS)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {schema['enum']}, got {value!r}"[:300]
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 256):
            return f"{where} has {len(value)} items, more than the limit of {schema.get('maxItems', 256)}"
        for i, item in enumerate(value):
            problem = check_value(item, schema.get("items", {}), f"{where}[{i}]")
            if problem:
                return problem
    if isinstance(value, dict) and "properties" in schema:
        return check_object(value, schema, where)
    return None


def check_object(value: dict[str, Any], schema: dict[str, Any], where: str = "arguments") -> str | None:
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            return f"{where} is missing the required field {key!r}"
    for key, item in value.items():
        if key not in props:
            if schema.get("additionalProperties", True) is False:
                return f"{where} has an unknown field {str(key)[:64]!r}; expected {sorted(props)}"
            continue
        problem = check_value(item, props[key], f"{where}.{key}")
        if problem:
            return problem
    return None


class ToolTable:
    """The tools of one task, by name, with checked dispatch."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = {t.name: t for t in tools}

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    async def call(self, name: str, arguments: Any) -> str:
        tool = self.tools.get(name)
        if tool is None:
            return f"error: unknown tool {str(name)[:64]!r}; available: {', '.join(self.tools)}"
        if not isinstance(arguments, dict):
            return "error: arguments must be a JSON object"
        problem = check_object(arguments, tool.parameters)
        if problem:
            return f"error: {problem}"
        try:
            result = tool.fn(**arguments)
            if inspect.isawaitable(result):
                result = await result
        except ToolError as exc:
            return f"error: {exc}"
        text = result if isinstance(result, str) else json.dumps(result, sort_keys=True, default=str)
        return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + f"\n... [cut: {len(text)} characters]"
