"""Scoring one reply to an instruction-following task: the reward parts and the task score.

Parts, each in [0, 1] (names follow the preference rubric of learner/objectives/preference.py,
which weighs them with signed weights):
- rule/<kind>: 1.0 when that rule of the task holds (rules.py), else 0.0;
- constraints: the share of the task's rules that hold;
- informative: 1.0 when the reply uses the topic keyword as a word (it addresses the request);
- errors: 1.0 when the turn is malformed, else 0.0. Malformed: a tool call or tool-call markup
  (the family has no tools), control characters or U+FFFD (binary text), more than `max_chars`
  characters, or, where the task asks for JSON, a reply that is not a JSON object;
- hallucinated: the share of the reply's JSON keys that the task did not ask for (0.0 when no JSON
  object was asked for or parsed);
- verbosity: min(1, max(0, W - B) / B) for a reply of W words (rules.words), with B the task's
  max_words bound, or `budget` where the task has none.

Task score S = (1 - errors) * informative * constraints * (1 - verbosity), in [0, 1]. S = 1.0
exactly when every rule holds, the reply addresses the topic, the turn is well formed and within
its length bound; a reply that never names the topic scores 0 whatever its form, so formatting
alone earns nothing.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from kpop.envs.contract import Action
from kpop.envs.families.instructions.rules import has_word, json_object, words
from kpop.envs.families.instructions.tasks import InstructionTask


@dataclass(frozen=True)
class Grade:
    score: float  # the task score S, in [0, 1]
    parts: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def malformed(action: Action, max_chars: int) -> str | None:
    """Why this turn is not a reply that can be graded, or None when it can."""
    if action.tool_calls or action.parse_errors:
        return "this task has no tools; reply with the answer itself"
    if len(action.text) > max_chars:
        return f"the reply has {len(action.text)} characters, more than the limit of {max_chars}"
    if any(c == "\ufffd" or (unicodedata.category(c) == "Cc" and c not in "\n\r\t") for c in action.text):
        return "the reply contains control characters or undecodable bytes"
    return None


def verbosity(n_words: int, bound: int) -> float:
    return min(1.0, max(0, n_words - bound) / bound)


def grade(task: InstructionTask, action: Action, budget: int, max_chars: int) -> Grade:
    problem = malformed(action, max_chars)
    if problem is not None:
        parts = {**{f"rule/{r.kind}": 0.0 for r in task.rules}, "constraints": 0.0, "informative": 0.0,
                 "errors": 1.0, "hallucinated": 0.0, "verbosity": float(len(action.text) > max_chars)}
        return Grade(0.0, parts, {"error": problem})
    text = action.text
    held = {f"rule/{r.kind}": float(r.holds(text)) for r in task.rules}
    constraints = sum(held.values()) / len(held)
    informative = float(has_word(text, task.topic.keyword))
    json_rule = next((r for r in task.rules if r.kind == "json_keys"), None)
    obj = json_object(text) if json_rule is not None else None
    errors = float(json_rule is not None and obj is None)
    hallucinated = len(set(obj) - set(json_rule.words)) / len(obj) if obj else 0.0
    bound = next((r.count for r in task.rules if r.kind == "max_words"), budget)
    n_words = len(words(text))
    verbose = verbosity(n_words, bound)
    score = (1 - errors) * informative * constraints * (1 - verbose)
    parts = {**held, "constraints": constraints, "informative": informative, "errors": errors,
             "hallucinated": hallucinated, "verbosity": verbose}
    details = {"words": n_words, "failed": [r.kind for r in task.rules if not held[f"rule/{r.kind}"]]}
    if errors:
        details["error"] = "the task asks for a JSON object and the reply is not one"
    return Grade(score, parts, details)
