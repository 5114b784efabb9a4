"""The environment contract: multi-turn agent tasks on top of gymnasium.Env.

An episode: `reset(seed, options)` returns the Task (chat messages and the tools the model may call,
as OpenAI function-calling JSON schemas); then, for each model turn, `step(action)` takes the
model's Action (its text plus the tool calls parsed from it) and returns a StepResult: observation
messages for the model, reward, terminated, truncated and a StepInfo (reward parts, details).

Invariants every environment keeps (the conformance suite in envs/conformance.py checks them):
- `reset` with the same seed gives the same task;
- rewards lie in `reward_range`;
- a malformed action (bad JSON, unknown tool, wrong argument types, huge arguments) yields an error
  observation or a truncation, never an exception;
- `astep` is a coroutine and may wait on tools or sandboxes; callers bound it with a timeout, so
  the environment must tolerate being cancelled;
- environments pickle, so they can be shipped to worker processes;
- every step is bounded: `step_timeout_s` caps one `astep` (tools and sandboxes included) and
  `max_turns` caps an episode. `bounded_step` is the one way callers should step: a step that runs
  past its timeout, or an environment that raises anyway, comes back as a truncation with the
  cause in `info.details["error"]`, so nothing an environment does becomes an exception there.

Two optional declarations serve the training rounds (kpop.stages): `reward_parts` names the reward
parts a final step reports (a preference round scores only families that report a part of its
rubric), and `answer_pattern` is a regex whose first match in the final turn is the answer the
environment grades, so that text after it cannot change the task score (a distillation round cuts
correct samples there). The conformance suite checks both against the reference solver's episodes.

The gymnasium `reset`/`step` methods wrap the typed ones: observations are the JSON text of the
messages (a `gymnasium.spaces.Text`), so gymnasium's own checker runs on every environment.
"""

from __future__ import annotations

import abc
import asyncio
import json
import string
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium import spaces

MAX_TEXT = 1 << 16
CHARSET = string.printable


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class Action:
    """One model turn: its raw text and the tool calls parsed from it (parse errors kept, not raised)."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    task_id: str
    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class StepInfo:
    reward_parts: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    observations: list[Message]
    reward: float
    terminated: bool
    truncated: bool
    info: StepInfo = field(default_factory=StepInfo)


class AgentEnv(gym.Env, abc.ABC):
    """Base class of every KPop environment. Subclasses implement `make_task` and `astep`."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    reward_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    observation_space = spaces.Text(max_length=MAX_TEXT, charset=CHARSET)
    action_space = spaces.Text(max_length=MAX_TEXT, charset=CHARSET)
    step_timeout_s: ClassVar[float] = 30.0
    max_turns: int = 16
    reward_parts: ClassVar[tuple[str, ...]] = ()    # parts every final step reports (beyond per-task ones)
    answer_pattern: ClassVar[str | None] = None     # the graded answer: first match in the final turn

    def __init__(self) -> None:
        super().__init__()
        self.task: Task | None = None
        self.reward_terms: tuple[Any, ...] = ()
        self.steps_taken = 0

    def set_reward_terms(self, terms: Any) -> None:
        """Reward-shaping terms from the RunSpec (`kpop.envs.rewards`); environments that support
        shaping apply them to the final step, the others ignore them."""
        self.reward_terms = tuple(terms or ())

    @abc.abstractmethod
    def make_task(self, seed: int, options: dict[str, Any] | None) -> Task:
        """The task for this seed; the same seed must give the same task."""

    @abc.abstractmethod
    async def astep(self, action: Action) -> StepResult:
        """Apply one model turn to the current task."""

    def reference_action(self) -> str | None:
        """The reference solver's next turn for the current state (None: this env ships no solver)."""
        return None

    def reset_task(self, seed: int, options: dict[str, Any] | None = None) -> Task:
        """Typed reset: the task for this seed (deterministic)."""
        self.task = self.make_task(seed, options)
        self.steps_taken = 0
        return self.task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        task = self.reset_task(seed, options)
        return messages_to_text(task.messages), {"task_id": task.task_id, "tools": task.tools}

    def step(self, action: Action | str):
        from kpop.rollout.tool_parser import parse_action

        act = action if isinstance(action, Action) else parse_action(str(action))
        result = asyncio.run(bounded_step(self, act))
        info = {"reward_parts": result.info.reward_parts, **result.info.details}
        return messages_to_text(result.observations), result.reward, result.terminated, result.truncated, info


def messages_to_text(messages: list[Message]) -> str:
    text = json.dumps(ensure_ascii=True, obj=[{k: v for k, v in asdict(m).items() if v is not None} for m in messages])
    return text[:MAX_TEXT]


def timeout_result(env: AgentEnv, seconds: float) -> StepResult:
    note = f"error: the step took longer than {seconds:g} s and was stopped; the episode ends here"
    return StepResult([Message("user", note)], neutral_reward(env), False, True, StepInfo({}, {"error": "timeout", "timeout_s": seconds}))


def neutral_reward(env: AgentEnv) -> float:
    """0.0 clipped into the env's reward range: the reward of a step that earned nothing."""
    low, high = env.reward_range
    return float(min(max(0.0, low), high))


async def bounded_step(env: AgentEnv, action: Action, timeout_s: float | None = None) -> StepResult:
    """`env.astep(action)` bounded by `timeout_s` (default: the env's `step_timeout_s`).

    Never raises for anything the environment or the action does: a timeout or an exception
    becomes a truncated StepResult. Cancellation from outside still propagates, as it must.
    """
    seconds = env.step_timeout_s if timeout_s is None else timeout_s
    env.steps_taken = getattr(env, "steps_taken", 0) + 1
    try:
        result = await asyncio.wait_for(env.astep(action), timeout=seconds)
    except TimeoutError:
        return timeout_result(env, seconds)
    except Exception as exc:  # noqa: BLE001 - a buggy (e.g. third-party) env must not take the rollout worker down
        note = f"error: the environment failed on this step ({type(exc).__name__}); the episode ends here"
        return StepResult([Message("user", note)], neutral_reward(env), False, True, StepInfo({}, {"error": f"{type(exc).__name__}: {exc}"}))
    if not (result.terminated or result.truncated) and env.steps_taken >= env.max_turns:
        # the turn cap holds for every env, including ones that do not count turns themselves
        note = Message("user", f"error: the turn limit ({env.max_turns}) is reached without a final answer")
        return replace(result, observations=[*result.observations, note], truncated=True)
    return result
