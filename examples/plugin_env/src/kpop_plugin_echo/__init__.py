"""`echo`: the model must reply with a given word, exactly. Reward 1.0 or 0.0.

A plugin environment subclasses kpop.envs.contract.AgentEnv and implements `make_task`
(deterministic in the seed) and `astep` (never raising for malformed actions); a reference solver
(`reference_action`) lets `kpop envs check` test that the reward can be earned, and gives a run its
cold-start data. Its options are the fields of the nested `Options` model (a run sets them in
`envs[].options`; unknown or out-of-range values are refused):
- `num_words`: how many words (from the start of WORDS) a task draws from;
- `hidden`: the request names a slot instead of the word; the model reads the slot with the
  `read_slot` tool (slots hold a fresh shuffle of the words on every task), then replies (three
  turns at most);
- `reference_tool_rate`: with `hidden`, the share of tasks on which the reference reads the word
  with the tool; on the others it replies from memory (it knows the word; a model can only guess),
  cold-start data with a behaviour RL can improve on.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.contract import Action, AgentEnv, Message, StepInfo, StepResult, Task

WORDS = ["apple", "river", "orbit", "lantern", "meadow", "quartz", "harbor", "velvet"]
SLOTS = 9
READ_SLOT = {
    "type": "function",
    "function": {"name": "read_slot", "description": f"Return the word in a slot (1-{SLOTS}).",
                 "parameters": {"type": "object", "properties": {"slot": {"type": "integer"}}, "required": ["slot"]}},
}


class EchoEnv(AgentEnv):
    """Reply with the requested word (or, hidden, with the word in the requested slot)."""

    max_turns = 1

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_words: int = Field(len(WORDS), ge=1, le=len(WORDS), description="Words a task draws from.")
        hidden: bool = Field(False, description="The request names a slot, not the word; the model reads it with the `read_slot` tool.")
        reference_tool_rate: float = Field(1.0, ge=0.0, le=1.0, description="With `hidden`: share of tasks on which the reference calls the tool; on the others it replies from memory.")

    def __init__(self, num_words: int = len(WORDS), hidden: bool = False, reference_tool_rate: float = 1.0) -> None:
        super().__init__()
        self.num_words, self.hidden, self.reference_tool_rate = num_words, hidden, reference_tool_rate
        self.max_turns = 3 if hidden else 1
        self.word, self.uses_tool, self.read = "", False, False
        self.slot, self.slots = 0, [""] * SLOTS

    def make_task(self, seed, options):
        rng = random.Random(seed)
        self.word = rng.choice(WORDS[:self.num_words])
        self.uses_tool = self.hidden and rng.random() < self.reference_tool_rate
        self.read = False
        if self.hidden:
            self.slot = rng.randint(1, SLOTS)
            self.slots = [rng.choice(WORDS[:self.num_words]) for _ in range(SLOTS)]
            self.slots[self.slot - 1] = self.word
            return Task(f"echo-{seed}", [Message("user", f"Reply with exactly the word in slot {self.slot}.")], [READ_SLOT])
        return Task(f"echo-{seed}", [Message("user", f"Reply with exactly the word: {self.word}")])

    def reference_action(self) -> str:
        if self.uses_tool and not self.read:
            return f'<tool_call>{{"name": "read_slot", "arguments": {{"slot": {self.slot}}}}}</tool_call>'
        return self.word

    async def astep(self, action: Action) -> StepResult:
        if action.tool_calls or action.parse_errors:
            if not self.hidden:
                return StepResult([Message("user", "error: this task has no tools")], 0.0, False, True, StepInfo({"correct": 0.0}))
            replies = [self._call(call.name, call.arguments) for call in action.tool_calls]
            replies += [Message("tool", f"error: {e}", name="read_slot") for e in action.parse_errors]
            return StepResult(replies, 0.0, False, False, StepInfo({"correct": 0.0, "used_tool": float(self.read)}))
        correct = float(action.text.strip() == self.word)
        parts = {"correct": correct, **({"used_tool": float(self.read)} if self.hidden else {})}
        return StepResult([], correct, True, False, StepInfo(parts, {"expected": self.word}))

    def _call(self, name: str, arguments: dict) -> Message:
        if name != "read_slot":
            return Message("tool", f"error: unknown tool {name!r}; available: read_slot", name=name[:64])
        slot = arguments.get("slot")
        if type(slot) is not int or not 1 <= slot <= SLOTS:
            return Message("tool", f"error: 'slot' must be an integer from 1 to {SLOTS}", name="read_slot")
        self.read = self.read or slot == self.slot
        return Message("tool", self.slots[slot - 1], name="read_slot")
