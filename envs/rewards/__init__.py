"""Reward helpers (docs: /work/shared/reference/objectives.md) and their composition per environment.

Each helper is a pure function of what it is given, so the same numbers come out in an environment,
in the learner and in a test. Episode-level terms (format, repetition, tool-sequence agreement) are
applied by the environment to its final step (`compose.shape_reward`); the Evo-CoT dynamic length
term needs the other samples of the same prompt and is applied to a group
(`length.dynamic_length_rewards`) by whoever holds the group.
"""

from kpop.envs.rewards.compose import EpisodeView, group_shaping, shape_reward
from kpop.envs.rewards.format import format_penalty
from kpop.envs.rewards.length import dynamic_length_rewards
from kpop.envs.rewards.repetition import compression_ratio, repetition_penalty
from kpop.envs.rewards.tool_sequence import tool_sequence_agreement

__all__ = [
    "EpisodeView",
    "compression_ratio",
    "dynamic_length_rewards",
    "format_penalty",
    "group_shaping",
    "repetition_penalty",
    "shape_reward",
    "tool_sequence_agreement",
]
