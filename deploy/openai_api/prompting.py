"""OpenAI messages and tools <-> token ids, through the checkpoint's own chat template.

Contract:
- `Prompter.chat_ids(messages, tools)` renders the conversation with the tokenizer's chat template
  (generation prompt appended) and encodes it without adding special tokens, exactly like
  kpop.rollout.chat.ChatFormat, so a served model sees what it was trained on.
- Assistant messages that carry `tool_calls` are rendered as the model writes them: if the
  template knows `tool_calls` they are passed through (arguments as objects), otherwise they are
  appended to the content as Hermes `<tool_call>{...}</tool_call>` blocks.
- `split_tool_calls(text, choice)` parses Hermes tool calls (kpop.rollout.tool_parser) out of
  generated text into OpenAI `tool_calls` (arguments as a JSON string) plus the remaining content.
  tool_choice "none" parses nothing; a named choice keeps only calls to that function. Decoding is
  not constrained: "required" cannot force a call the model did not write.
"""

from __future__ import annotations

import json
import uuid

from kpop.deploy.openai_api.schemas import (
    ChatMessage,
    FunctionCallOut,
    NamedToolChoice,
    ToolCallOut,
    ToolDef,
)
from kpop.envs.contract import Message
from kpop.rollout.tool_parser import _BLOCK, CLOSE, OPEN, parse_action


def _arguments(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def hermes_block(name: str, arguments) -> str:
    return OPEN + json.dumps({"name": name, "arguments": arguments}) + CLOSE


def template_message(m: ChatMessage, template_knows_tool_calls: bool) -> dict:
    role = "system" if m.role == "developer" else m.role
    out: dict = {"role": role, "content": m.text()}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        if template_knows_tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments)}} for c in m.tool_calls]
        else:
            out["content"] += "".join(hermes_block(c.function.name, _arguments(c.function.arguments))
                                      for c in m.tool_calls)
    return out


def as_env_message(m: ChatMessage) -> Message:
    """The environment-contract Message of a user/tool/system message (for ChatFormat suffixes)."""
    role = "system" if m.role == "developer" else m.role
    return Message(role, m.text(), m.name, m.tool_call_id)


class Prompter:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        template = tokenizer.chat_template or ""
        if not template:
            raise ValueError("the checkpoint's tokenizer has no chat template; chat completions need one")
        self.template_knows_tool_calls = "tool_calls" in template

    def encode(self, text: str) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # the fast tokenizer's Rust encoder, which tokenizer.encode calls too: it releases the GIL
            # while it works, where the Python wrapper around it holds it (a 1M-character prompt
            # tokenised on a thread stalled the event loop 35 ms this way, 360 ms the other)
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat_ids(self, messages: list[ChatMessage], tools: list[ToolDef] | None) -> list[int]:
        rendered = [template_message(m, self.template_knows_tool_calls) for m in messages]
        tool_json = [t.model_dump(exclude_none=True) for t in tools] if tools else None
        text = self.tokenizer.apply_chat_template(rendered, tools=tool_json, add_generation_prompt=True, tokenize=False)
        return self.encode(text)


def split_tool_calls(text: str, choice) -> tuple[str | None, list[ToolCallOut]]:
    """(content without tool-call blocks or None, parsed tool calls) for one generated text."""
    if choice == "none":
        return text, []
    action = parse_action(text)
    calls = action.tool_calls
    if isinstance(choice, NamedToolChoice):
        calls = [c for c in calls if c.name == choice.function.name]
    if not calls:
        return text, []
    content = _BLOCK.sub("", text).strip()
    out = [ToolCallOut(id=f"call_{uuid.uuid4().hex[:24]}",
                       function=FunctionCallOut(name=c.name, arguments=json.dumps(c.arguments))) for c in calls]
    return content or None, out
