"""Chat formatting at the token level: the template is applied once, then only appended to.

`prompt_ids` renders the task's messages with the tokenizer's chat template (and the generation
prompt). `observation_ids` renders *only* the new observation messages plus the next generation
prompt, as the suffix the template would add to a conversation, so that

    prompt_ids + generated_turn_1 + observation_ids(obs_1) + generated_turn_2 + ...

is exactly what the model would see if the whole conversation were rendered at once. The template
must be append-only (checked once at construction); generated tokens are never decoded and
re-tokenised into the context.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kpop.envs.contract import Message

_PROBE = [{"role": "user", "content": "probe"}, {"role": "assistant", "content": "reply"}]


def _as_dicts(messages: list[Message]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(m).items() if v is not None} for m in messages]


class ChatFormat:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id: int = tokenizer.eos_token_id
        base = self._render(_PROBE, add_generation_prompt=False)
        extended = self._render(_PROBE + [{"role": "tool", "content": "x"}], add_generation_prompt=True)
        if not extended.startswith(base):
            raise ValueError("the tokenizer's chat template is not append-only; multi-turn token ids cannot be kept end to end")

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, tools=None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        return self.encode(self._render(_as_dicts(messages), True, tools=tools or None))

    def observation_ids(self, observations: list[Message]) -> list[int]:
        base = self._render(_PROBE, add_generation_prompt=False)
        full = self._render(_PROBE + _as_dicts(observations), add_generation_prompt=True)
        return self.encode(full[len(base):])

    def turn_ids(self, text: str) -> list[int]:
        """Token ids of an assistant turn written as text (reference solvers), ending with EOS."""
        return self.encode(text) + [self.eos_token_id]

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)
