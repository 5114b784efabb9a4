"""A seeded random policy: the floor every environment's reward should sit near.

Each turn it picks, with fixed odds, a tool call with random arguments built from the tool's JSON
schema (sometimes of the wrong type), a malformed call (bad JSON, an unknown tool), or a final
answer of random words. It knows nothing about the task beyond the tool schemas, so its score
measures how much reward an environment hands out for free.
"""

from __future__ import annotations

import json
import random
from typing import Any

from kpop.envs.contract import AgentEnv, Message, Task

_WORDS = ["yes", "no", "done", "the", "answer", "order", "file", "1", "42", "report", "cancel", "def f(x): return x", "Answer: unknown"]


def random_value(schema: dict[str, Any], rng: random.Random) -> Any:
    kind = schema.get("type", rng.choice(["string", "integer"]))
    if "enum" in schema and rng.random() < 0.8:
        return rng.choice(schema["enum"])
    if kind == "integer":
        return rng.randint(-5, 100)
    if kind == "number":
        return round(rng.uniform(-5, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [random_value(schema.get("items", {}), rng) for _ in range(rng.randint(0, 3))]
    if kind == "object":
        return {k: random_value(v, rng) for k, v in schema.get("properties", {}).items()}
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))


class RandomPolicy:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(f"random-policy:{seed}")

    async def __call__(self, env: AgentEnv, task: Task, history: list[Message]) -> str:
        roll = self.rng.random()
        if task.tools and roll < 0.5:
            fn = self.rng.choice(task.tools)["function"]
            props = fn.get("parameters", {}).get("properties", {})
            args = {k: random_value(v if self.rng.random() < 0.9 else {}, self.rng) for k, v in props.items() if self.rng.random() < 0.9}
            return "<tool_call>" + json.dumps({"name": fn["name"], "arguments": args}) + "</tool_call>"
        if roll < 0.6:
            return self.rng.choice(['<tool_call>{"name": "search", "arguments": {</tool_call>', '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>', "<tool_call>[1, 2]</tool_call>"])
        return " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(1, 8)))
