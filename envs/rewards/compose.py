"""Composition of reward-shaping terms (the RunSpec's `envs[].rewards`) onto a task reward.

`shape_reward(base, parts, view, terms)` applies the episode-level terms in order:
- format: adds `format_penalty` over all the model's turns;
- repetition: adds `repetition_penalty` over all the model's turns;
- tool_sequence: mixes in agreement with the reference calls, when the env provides them;
- dynamic_length: skipped here (it needs the group; see `group_shaping`).
Each applied term records its value in the returned parts under `shape/<type>`. The result is
clipped to [-1, 1], the reward range of every shaped KPop environment. With no terms the base
reward comes back unchanged, so shaping is strictly opt-in.

`group_shaping(rewards, lengths, correct, terms)` applies the group-level terms (dynamic_length) to
the final rewards of the G samples of one prompt and, like `shape_reward`, reports each term's
value per sample under `shape/<type>`; it does not clip (the term is a bonus on top of the
episode's reward). The loops call it once a group is complete (kpop.loop.group_rewards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from kpop.envs.rewards.format import format_penalty
from kpop.envs.rewards.length import dynamic_length_rewards
from kpop.envs.rewards.repetition import repetition_penalty
from kpop.envs.rewards.tool_sequence import Call, tool_sequence_agreement
from kpop.spec.envs import RewardTermSpec

_ADAPTER = TypeAdapter(list[RewardTermSpec])


@dataclass
class EpisodeView:
    """What the shaping terms may look at: the model's turns and its tool calls."""

    texts: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    reference_calls: list[Call] | None = None


def parse_terms(terms: Sequence[Any]) -> list[Any]:
    """Spec objects or plain dicts (as in YAML) to validated term specs."""
    return _ADAPTER.validate_python([t.model_dump() if hasattr(t, "model_dump") else t for t in terms])


def shape_reward(base: float, parts: dict[str, float], view: EpisodeView, terms: Sequence[Any]) -> tuple[float, dict[str, float]]:
    reward, parts = float(base), dict(parts)
    text = "\n".join(view.texts)
    for term in parse_terms(terms):
        if term.type == "format":
            value = format_penalty(text, term.forbidden_tags, term.penalty)
            reward += value
        elif term.type == "repetition":
            value = repetition_penalty(text, term.threshold, term.weight, term.min_chars)
            reward += value
        elif term.type == "tool_sequence":
            if view.reference_calls is None:
                continue
            value = tool_sequence_agreement(view.calls, view.reference_calls, term.name_only_credit)
            reward = (1 - term.weight) * reward + term.weight * value
        else:
            continue
        parts[f"shape/{term.type}"] = float(value)
    return max(-1.0, min(1.0, reward)), parts


def group_shaping(rewards: Sequence[float], lengths: Sequence[float], correct: Sequence[bool],
                  terms: Sequence[Any]) -> list[tuple[float, dict[str, float]]]:
    """Each sample's reward after the group-level terms, with the parts those terms added."""
    out: list[tuple[float, dict[str, float]]] = [(float(r), {}) for r in rewards]
    for term in parse_terms(terms):
        if term.type == "dynamic_length":
            bonus = dynamic_length_rewards(lengths, correct, term.alpha)
            out = [(r + d, {**parts, f"shape/{term.type}": parts.get(f"shape/{term.type}", 0.0) + d})
                   for (r, parts), d in zip(out, bonus)]
    return out
