"""Distillation targets: the shortest verified-correct sample per prompt, cut after its answer.

Contract (`distill_targets`):
- a sample is correct when its correctness score (kpop.learner.objectives.distill.correctness: the
  reward part "accuracy", else "task", else the reward) is >= the threshold;
- pruning (`prune`) applies to a correct sample whose environment declares an `answer_pattern`
  (AgentEnv): in its final turn (the trailing run of generated tokens), when the decoded text
  continues with more than whitespace after the pattern's first match, the turn is cut after the
  token that completes the match and ends with EOS. The environment grades that first match only
  (the conformance suite's `declarations` check), so the cut sample scores what the sample scored,
  and its reward and parts are kept. The added EOS carries log-prob 0 and the version of the token
  before it: distillation trains on tokens, never on behaviour log-probs;
- with `usual_turns` (the default), a prompt's candidates are its correct samples that take the
  most common number of turns among its correct samples (ties: the larger number): a sample that
  skipped a tool or a check and happened to be right (a guessed calculator answer) is shorter than
  every sample that did the work, and teaching it would teach guessing; a shorter strategy is
  taught only once most of the prompt's correct samples use it;
- then the shortest candidate per prompt (fewest generated tokens, ties: first in batch order) is
  the target (kpop.learner.objectives.distill.select_shortest_correct), so a pruned sample can win.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from kpop.learner.objectives.distill import correctness, select_shortest_correct
from kpop.trajectory import Trajectory

Decode = Callable[[list[int]], str]


@dataclass(frozen=True)
class Targets:
    targets: list[Trajectory]   # one per prompt with a correct sample
    correct: list[Trajectory]   # every correct sample, as generated
    pruned: int                 # targets that were cut after their answer
    pruned_tokens: int          # generated tokens the cuts removed from the targets


def final_turn_start(t: Trajectory) -> int:
    """Index of the first token of the trailing run of generated tokens (len if none)."""
    i = len(t.loss_mask)
    while i > 0 and t.loss_mask[i - 1] == 1:
        i -= 1
    return i


def answer_prefix(turn: list[int], decode: Decode, pattern: str) -> int | None:
    """Tokens of `turn` up to and including the one that completes the first answer, when more than
    whitespace follows it; None when there is no answer or nothing to cut."""
    text = decode(turn)
    match = re.search(pattern, text)
    if match is None or not text[match.end():].strip():
        return None
    for k in range(1, len(turn)):
        head = decode(turn[:k])
        # a prefix of the text (a token ending inside a multi-byte character decodes to U+FFFD and
        # is not one: the next token completes it) that holds the whole first answer
        if len(head) >= match.end() and text.startswith(head):
            again = re.search(pattern, head)
            return k if again is not None and again.span() == match.span() else None
    return None


def prune(t: Trajectory, decode: Decode, pattern: str, eos_id: int) -> Trajectory:
    """`t` cut after the first answer of its final turn (see the module contract), or `t` itself."""
    start = final_turn_start(t)
    turn = t.token_ids[start:]
    k = answer_prefix(turn, decode, pattern) if turn else None
    if k is None:
        return t
    keep = start + k
    ids, mask, logps, versions = t.token_ids[:keep], t.loss_mask[:keep], t.logprobs[:keep], t.versions[:keep]
    if ids[-1] != eos_id:
        ids, mask, logps, versions = ids + [eos_id], mask + [1], logps + [0.0], versions + [versions[-1]]
    if len(ids) >= len(t.token_ids):
        return t
    return replace(t, token_ids=ids, loss_mask=mask, logprobs=logps, versions=versions)


def usual_turns(correct: list[Trajectory]) -> list[Trajectory]:
    """The samples whose turn count is their prompt's most common one (ties: the larger count)."""
    counts: dict[str, Counter] = {}
    for t in correct:
        counts.setdefault(t.group_id or t.task_id, Counter())[t.num_turns] += 1
    usual = {key: max(c, key=lambda turns: (c[turns], turns)) for key, c in counts.items()}
    return [t for t in correct if t.num_turns == usual[t.group_id or t.task_id]]


def distill_targets(samples: list[Trajectory], threshold: float, patterns: Mapping[str, str | None],
                    decode: Decode, eos_id: int, cut: bool = True, same_turns: bool = True) -> Targets:
    """`patterns`: each environment's answer_pattern by env_id (missing or None: never cut);
    `same_turns`: choose among the samples of the usual turn count only (`usual_turns`)."""
    correct = [t for t in samples if correctness(t) >= threshold]
    shaped = []
    for t in correct:
        pattern = patterns.get(t.env_id) if cut else None
        shaped.append(prune(t, decode, pattern, eos_id) if pattern else t)
    usual = {id(t) for t in usual_turns(correct)} if same_turns else {id(t) for t in correct}
    candidates = [s for s, t in zip(shaped, correct) if id(t) in usual]
    targets = select_shortest_correct(candidates, threshold)
    originals = {id(s): t for s, t in zip(shaped, correct)}
    cuts = [(originals[id(s)], s) for s in targets if originals[id(s)] is not s]
    return Targets(targets, correct, len(cuts), sum(a.num_generated - b.num_generated for a, b in cuts))
