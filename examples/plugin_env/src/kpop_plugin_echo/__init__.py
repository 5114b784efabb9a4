"""`echo`: the model must reply with a given word, exactly. One turn, reward 1.0 or 0.0.

A plugin environment subclasses kpop.envs.contract.AgentEnv and implements `make_task`
(deterministic in the seed) and `astep` (never raising for malformed actions); a reference solver
(`reference_action`) lets `kpop envs check` test that the reward can be earned.
"""

from __future__ import annotations

import random

from kpop.envs.contract import Action, AgentEnv, Message, StepInfo, StepResult, Task

WORDS = ["apple", "river", "orbit", "lantern", "meadow", "quartz", "harbor", "velvet"]


class EchoEnv(AgentEnv):
    """Reply with the requested word."""

    max_turns = 1

    def __init__(self) -> None:
        super().__init__()
        self.word = ""

    def make_task(self, seed, options):
        self.word = random.Random(seed).choice(WORDS)
        return Task(f"echo-{seed}", [Message("user", f"Reply with exactly the word: {self.word}")])

    def reference_action(self) -> str:
        return self.word

    async def astep(self, action: Action) -> StepResult:
        if action.tool_calls or action.parse_errors:
            return StepResult([Message("user", "error: this task has no tools")], 0.0, False, True, StepInfo({"correct": 0.0}))
        correct = float(action.text.strip() == self.word)
        return StepResult([], correct, True, False, StepInfo({"correct": correct}, {"expected": self.word}))
