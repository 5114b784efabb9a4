"""Hermes-style tool-call parsing: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Never raises: anything malformed (bad JSON, a missing name, arguments that are not an object, an
unclosed tag, an oversized payload) becomes a parse error on the Action, which the environment turns
into an error observation for the model.
"""

from __future__ import annotations

import json
import re

from kpop.envs.contract import Action, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_CALL_CHARS = 8192
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


def parse_action(text: str) -> Action:
    calls: list[ToolCall] = []
    errors: list[str] = []
    for index, match in enumerate(_BLOCK.finditer(text)):
        body = match.group(1).strip()
        if not match.group(0).endswith(CLOSE):
            errors.append(f"tool call {index}: missing {CLOSE}")
            continue
        if len(body) > MAX_CALL_CHARS:
            errors.append(f"tool call {index}: {len(body)} characters, more than the limit of {MAX_CALL_CHARS}")
            continue
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            errors.append(f"tool call {index}: invalid JSON ({exc.msg} at position {exc.pos})")
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            errors.append(f"tool call {index}: expected an object with a string 'name'")
            continue
        args = payload.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            errors.append(f"tool call {index}: 'arguments' must be a JSON object")
            continue
        calls.append(ToolCall(name=payload["name"], arguments=args, id=f"call_{index}"))
    return Action(text=text, tool_calls=calls, parse_errors=errors)
