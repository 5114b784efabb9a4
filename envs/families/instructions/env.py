"""`instructions`: single-turn instruction following with itemised, verifiable rules.

Each task (tasks.py) is a request about a topic plus 1-4 rules (rules.py): length bounds, required
and forbidden words, a numbered list or a JSON object with given keys, lowercase or uppercase. The
model answers in one turn and has no tools; that turn ends the episode, whatever it is.

Reward: the task score of scoring.py, S = (1 - errors) * informative * constraints * (1 - verbosity)
in [0, 1] (reward part `task`, next to `constraints`, `informative`, `errors`, `hallucinated`,
`verbosity` and one `rule/<kind>` per rule), shaped by the RunSpec's reward terms like every other
family (kpop.envs.rewards.shape_reward), so reward_range is [-1, 1]; without terms (the default)
the reward is S. The reference solver (`reference_action`) sends the generator's reference reply,
which satisfies every rule (S = 1.0); the random policy scores 0, as it never names the topic.
A malformed turn (a tool call, binary or oversized text) ends the episode with reward 0, an
`error:` observation and `errors` = 1; stepping a finished or never-reset episode returns a terminal
result with an error detail. Nothing the model sends raises.
Held-out tasks: seeds >= kpop.tasks.HELD_OUT_BASE use topics that training seeds never use (option
`held_out_topics`; false: the training topics in new tasks). Difficulty: how many rules a task has
(`min_rules`, `max_rules`) and which kinds they are drawn from (`slots`).
Reference options (tasks.reference_reply): `reference_pad_to` pads at-least-n-words replies to a
length that needs no counting; on `reference_exact_rate` of the tasks the reply sits exactly on its
length rule instead, which a policy must count words to imitate: verified cold-start data whose
behaviour a small model cannot reproduce, like the calculator's answers from memory, so RL has a
better behaviour to find (the padded one).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.contract import MAX_TEXT, Action, AgentEnv, Message, StepInfo, StepResult, Task
from kpop.envs.families.instructions.scoring import grade
from kpop.envs.families.instructions.tasks import SLOTS, InstructionTask, generate, reference_reply
from kpop.envs.registry import register_env
from kpop.envs.rewards.compose import EpisodeView, shape_reward

SYSTEM = ("Answer the request in a single reply that follows every rule it lists. There are no tools. "
          "Words are runs of letters: numbers and punctuation do not count as words.")


@register_env("instructions")
class InstructionsEnv(AgentEnv):
    reward_range = (-1.0, 1.0)  # shaping terms may subtract from the [0, 1] task score
    max_turns = 1
    reward_parts = ("task", "constraints", "informative", "errors", "hallucinated", "verbosity")

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        min_rules: int = Field(1, ge=1, le=len(SLOTS), description="Fewest rules per task.")
        max_rules: int = Field(4, ge=1, le=len(SLOTS), description="Most rules per task.")
        verbosity_budget: int = Field(120, ge=10, le=10_000, description="Words a reply may use before `verbosity` grows, where no max_words rule bounds it.")
        max_chars: int = Field(8000, ge=256, le=MAX_TEXT, description="Longer replies are malformed (errors = 1, reward 0).")
        held_out_topics: bool = Field(True, description="Held-out tasks are about topics no training task uses (a reply must copy an unseen topic word to score); false: about the training topics, in new combinations of request and rules.")
        slots: list[Literal[SLOTS]] = Field(list(SLOTS), min_length=1, description="Kinds of rule a task draws from (length, include, forbid, format, case); fewer: an easier family. max_rules is capped at their number.")
        reference_pad_to: int = Field(0, ge=0, le=200, description="The reference pads a reply that an at-least-n-words rule bounds to max(n, this) words (0: exactly n); at least the largest bound drawn (30), a length that needs no counting.")
        reference_exact_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of tasks on which the reference reply sits exactly on its length rule (n words for at least n and for at most n): verified, but only counting words imitates it (cold-start data with a behaviour RL can improve on).")

    def __init__(self, min_rules: int = 1, max_rules: int = 4, verbosity_budget: int = 120, max_chars: int = 8000,
                 held_out_topics: bool = True, slots: list[str] | None = None, reference_pad_to: int = 0,
                 reference_exact_rate: float = 0.0) -> None:
        super().__init__()
        if min_rules > max_rules:
            raise ValueError(f"min_rules {min_rules} is larger than max_rules {max_rules}")
        self.slots = tuple(slots or SLOTS)
        if min_rules > len(set(self.slots)):
            raise ValueError(f"min_rules {min_rules} is more than the {len(set(self.slots))} slot(s) {list(self.slots)} allow")
        self.min_rules, self.max_rules = min_rules, max_rules
        self.verbosity_budget, self.max_chars = verbosity_budget, max_chars
        self.held_out_topics = held_out_topics
        self.reference_pad_to, self.reference_exact_rate = reference_pad_to, reference_exact_rate
        self.reference = ""
        self.current: InstructionTask | None = None
        self.done = False
        self.view = EpisodeView()

    def make_task(self, seed: int, options: dict[str, Any] | None) -> Task:
        self.current = generate(seed, self.min_rules, self.max_rules, self.held_out_topics, self.slots)
        # its own stream, so the rate leaves each seed's task unchanged
        exact = random.Random(f"exact:{seed}").random() < self.reference_exact_rate
        self.reference = reference_reply(self.current.topic, list(self.current.rules), self.reference_pad_to, exact)
        self.done = False
        self.view = EpisodeView()
        messages = [Message("system", SYSTEM), Message("user", self.current.request)]
        return Task(task_id=f"instructions-{seed}", messages=messages, tools=[])

    def reference_action(self) -> str | None:
        return None if self.current is None or self.done else self.reference

    async def astep(self, action: Action) -> StepResult:
        if self.current is None or self.done:
            why = "the episode is over; call reset" if self.done else "no task; call reset first"
            return StepResult([], 0.0, True, False, StepInfo({}, {"error": why}))
        self.done = True
        self.view.texts.append(action.text)
        result = grade(self.current, action, self.verbosity_budget, self.max_chars)
        reward, parts = shape_reward(result.score, {"task": result.score, **result.parts}, self.view, self.reward_terms)
        notes = [Message("user", f"error: {result.details['error']}")] if "error" in result.details else []
        return StepResult(notes, reward, True, False, StepInfo(parts, result.details))
