"""The Trajectory: the one record that crosses process boundaries.

A Trajectory is one agent episode on one task, as the learner will see it: the exact token ids the
engine received and produced, end to end (nothing is decoded and re-tokenised between turns).

Invariants (checked on construction, so a broken record never leaves the process that made it):
- `token_ids`, `loss_mask`, `logprobs` and `versions` have the same length, at least 1;
- `loss_mask[i]` is 1 where the policy generated token i and 0 where it came from the prompt or an
  environment observation; the first token is always a prompt token (mask 0);
- where the mask is 1, `logprobs[i]` is the behaviour log-prob the engine reported (finite, <= 0)
  and `versions[i]` the policy version that sampled it (>= 0); where the mask is 0 the log-prob is
  0.0 and the version -1;
- `reward` and every reward part are finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

PROMPT_VERSION = -1


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds spent on one trajectory, split by where the time went."""

    generate_s: float = 0.0
    env_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Trajectory:
    task_id: str
    env_id: str
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    versions: list[int]
    reward: float = 0.0
    reward_parts: dict[str, float] = field(default_factory=dict)
    group_id: str = ""
    num_turns: int = 0
    finish_reason: str = "stop"
    timing: Timing = field(default_factory=Timing)
    env_error: str = ""  # "" or why the environment failed the episode: "timeout" | "exception" (reward 0)
    sandbox_runs: int = 0  # sandbox executions its environment ran (code tools, verifiers)

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if n == 0:
            raise ValueError("Trajectory needs at least one (prompt) token")
        for name in ("loss_mask", "logprobs", "versions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Trajectory.{name} has length {len(getattr(self, name))}, token_ids has {n}")
        if self.loss_mask[0] != 0:
            raise ValueError("Trajectory must start with a prompt token (loss_mask[0] == 0)")
        for i, (m, lp, v) in enumerate(zip(self.loss_mask, self.logprobs, self.versions)):
            if m == 1:
                if not (math.isfinite(lp) and lp <= 1e-6):
                    raise ValueError(f"generated token {i} has log-prob {lp}; expected a finite value <= 0")
                if v < 0:
                    raise ValueError(f"generated token {i} has policy version {v}; expected >= 0")
            elif m == 0:
                if lp != 0.0 or v != PROMPT_VERSION:
                    raise ValueError(f"prompt/observation token {i} must carry log-prob 0.0 and version -1")
            else:
                raise ValueError(f"loss_mask[{i}] = {m}; expected 0 or 1")
        if not math.isfinite(self.reward) or not all(math.isfinite(v) for v in self.reward_parts.values()):
            raise ValueError("reward and reward parts must be finite")

    @property
    def num_generated(self) -> int:
        return sum(self.loss_mask)

    @property
    def prompt_length(self) -> int:
        """Tokens before the first generated token (the initial prompt)."""
        for i, m in enumerate(self.loss_mask):
            if m:
                return i
        return len(self.loss_mask)

    def min_version(self) -> int:
        """Oldest policy version among generated tokens (PROMPT_VERSION if none)."""
        gen = [v for v, m in zip(self.versions, self.loss_mask) if m]
        return min(gen) if gen else PROMPT_VERSION

    def with_reward(self, reward: float, parts: dict[str, float]) -> Trajectory:
        return replace(self, reward=reward, reward_parts=dict(parts))


class TrajectoryBuilder:
    """Appends prompt, generated and observation segments while keeping the invariants."""

    def __init__(self, task_id: str, env_id: str, group_id: str = "") -> None:
        self.task_id, self.env_id, self.group_id = task_id, env_id, group_id
        self.token_ids: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self.versions: list[int] = []

    def __len__(self) -> int:
        return len(self.token_ids)

    def add_context(self, token_ids: list[int]) -> None:
        """Prompt or environment-observation tokens: never trained on."""
        self.token_ids.extend(token_ids)
        self.loss_mask.extend([0] * len(token_ids))
        self.logprobs.extend([0.0] * len(token_ids))
        self.versions.extend([PROMPT_VERSION] * len(token_ids))

    def add_generated(self, token_ids: list[int], logprobs: list[float], versions: list[int]) -> None:
        if not (len(token_ids) == len(logprobs) == len(versions)):
            raise ValueError("generated tokens, log-probs and versions differ in length")
        self.token_ids.extend(token_ids)
        self.loss_mask.extend([1] * len(token_ids))
        self.logprobs.extend(logprobs)
        self.versions.extend(versions)

    def build(self, reward: float, reward_parts: dict[str, float], num_turns: int,
              finish_reason: str, timing: Timing, env_error: str = "", sandbox_runs: int = 0) -> Trajectory:
        return Trajectory(
            task_id=self.task_id, env_id=self.env_id, token_ids=list(self.token_ids),
            loss_mask=list(self.loss_mask), logprobs=list(self.logprobs), versions=list(self.versions),
            reward=reward, reward_parts=dict(reward_parts), group_id=self.group_id,
            num_turns=num_turns, finish_reason=finish_reason, timing=timing, env_error=env_error,
            sandbox_runs=sandbox_runs,
        )
