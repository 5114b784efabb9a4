"""ToolEnv: the shared episode logic of the tool-calling families (search, tool use, workflow, coding).

An episode alternates model turns and tool observations:
- a turn with tool calls (or tool-call parse errors) gets one `tool` message per call, errors
  included, and the episode goes on;
- a turn without tool calls is the final answer: the family's `verify` scores it (with the state
  the tools left behind), the RunSpec's reward terms shape the score, and the episode terminates;
- the `max_turns`-th turn that is still calling tools truncates the episode with reward 0;
- stepping a finished episode, or one never reset, returns a terminal result and an error detail.

Families implement `build` (the task for a seeded RNG, with the reference plan), `tools` and
`verify`. The reference solver replays the plan: `reference_action()` is the plan's turn for the
number of turns taken so far, i.e. it assumes it played the episode from the start.
"""

from __future__ import annotations

import abc
import json
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kpop.envs.contract import Action, AgentEnv, Message, StepInfo, StepResult, Task
from kpop.envs.rewards.compose import EpisodeView, shape_reward
from kpop.envs.tools import Tool, ToolTable

MAX_CALLS_PER_TURN = 8


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A Hermes-style tool call, as the model (and the reference solver) writes it."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@dataclass
class Episode:
    """A built task: what the model sees, plus the reference plan and facts for the verifier."""

    task_id: str
    system: str
    user: str
    plan: list[str]  # reference turns, each model text (tool calls or the final answer)
    reference_calls: list[tuple[str, dict[str, Any]]] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]
    parts: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class ToolEnv(AgentEnv, abc.ABC):
    reward_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    family: ClassVar[str] = "tool"

    def __init__(self, max_turns: int = 12) -> None:
        super().__init__()
        self.max_turns = max_turns
        self.episode: Episode | None = None
        self.table = ToolTable([])
        self.turns, self.done = 0, False
        self.view = EpisodeView()

    @abc.abstractmethod
    def build(self, seed: int, rng: random.Random) -> Episode:
        """Generate the task for this seed and set up the tools' backend state for it."""

    @abc.abstractmethod
    def tools(self) -> list[Tool]:
        """The tools of the current task (bound to its backend)."""

    @abc.abstractmethod
    async def verify(self, answer: str) -> Verdict:
        """Score the final answer together with the final backend state."""

    def make_task(self, seed: int, options: dict[str, Any] | None) -> Task:
        self.turns, self.done = 0, False
        self.episode = self.build(seed, random.Random(f"{self.family}:{seed}"))
        self.table = ToolTable(self.tools())
        self.view = EpisodeView(reference_calls=self.episode.reference_calls)
        messages = [Message("system", self.episode.system), Message("user", self.episode.user)]
        return Task(task_id=self.episode.task_id, messages=messages, tools=self.table.schemas())

    def reference_action(self) -> str | None:
        if self.episode is None or self.done or self.turns >= len(self.episode.plan):
            return None
        return self.episode.plan[self.turns]

    async def astep(self, action: Action) -> StepResult:
        if self.episode is None or self.done:
            why = "the episode is over; call reset" if self.done else "no task; call reset first"
            return StepResult([], 0.0, True, False, StepInfo({}, {"error": why}))
        self.turns += 1
        self.view.texts.append(action.text)
        if action.tool_calls or action.parse_errors:
            return await self._tool_turn(action)
        self.done = True
        verdict = await self.verify(action.text)
        reward, parts = shape_reward(verdict.score, {"task": verdict.score, **verdict.parts}, self.view, self.reward_terms)
        return StepResult([], reward, True, False, StepInfo(parts, {"turns": self.turns, **verdict.details}))

    async def _tool_turn(self, action: Action) -> StepResult:
        observations = [Message("tool", f"error: {e}", name="parse_error") for e in action.parse_errors]
        for index, call in enumerate(action.tool_calls):
            if index >= MAX_CALLS_PER_TURN:
                content = f"error: at most {MAX_CALLS_PER_TURN} tool calls per turn; this one was not run"
            else:
                self.view.calls.append((call.name, call.arguments))
                content = await self.table.call(call.name, call.arguments)
            observations.append(Message("tool", content, name=call.name[:64], tool_call_id=call.id))
        truncated = self.turns >= self.max_turns
        if truncated:
            self.done = True
            observations.append(Message("user", f"error: the turn limit ({self.max_turns}) is reached without a final answer"))
        errors = sum(m.content.startswith("error:") for m in observations)
        return StepResult(observations, 0.0, False, truncated, StepInfo({}, {"tool_errors": errors, "turns": self.turns}))
