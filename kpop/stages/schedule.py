"""When a run's training rounds happen: a pure function of the spec.

`learner.distill.every: k` puts a distillation round after RL steps k, 2k, ... (at most
train.steps); `learner.preference.every` likewise. Where both fall on one step the distillation
round runs first. Round i of a kind (counting from 1) trains learner steps (i-1)*steps+1 .. i*steps
of its phase, and its prompts are draws (i-1)*steps*tasks .. of its own task stream (kpop.tasks:
stream = the kind), so a run resumed from a checkpoint replays the same rounds on the same tasks
without storing anything beyond the RL step.
"""

from __future__ import annotations

from dataclasses import dataclass

from kpop.spec import RunSpec

KINDS = ("distill", "preference")   # the order of rounds that fall on one step
TITLES = {"distill": "distillation", "preference": "preference"}


@dataclass(frozen=True)
class Round:
    kind: str          # "distill" | "preference"
    after_step: int    # the RL step it follows
    index: int         # 1 for the kind's first round
    steps: int         # learner steps
    tasks: int         # prompts per learner step

    @property
    def first_step(self) -> int:
        """Its first learner step's number in the records of its phase (1-based, over the run)."""
        return (self.index - 1) * self.steps + 1

    @property
    def first_draw(self) -> int:
        """Its first prompt's draw index in its task stream."""
        return (self.index - 1) * self.steps * self.tasks


def rounds_after(spec: RunSpec, step: int) -> list[Round]:
    """The rounds that follow RL step `step`, in the order they run."""
    out = []
    for kind in KINDS:
        section = getattr(spec.learner, kind)
        if section.every and step % section.every == 0 and 0 < step <= spec.train.steps:
            out.append(Round(kind, step, step // section.every, section.steps, section.tasks))
    return out


def all_rounds(spec: RunSpec) -> list[Round]:
    return [r for step in range(1, spec.train.steps + 1) for r in rounds_after(spec, step)]


def describe(spec: RunSpec) -> list[str]:
    """One line per kind of round for the dry-run plan (none without rounds)."""
    lines = []
    g = spec.rollout.group_size
    for kind in KINDS:
        section = getattr(spec.learner, kind)
        if not section.every:
            continue
        steps = [s for s in range(section.every, spec.train.steps + 1, section.every)]
        when = ", ".join(map(str, steps)) if len(steps) <= 6 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"
        what = (f"shortest correct of {g} samples per prompt{', cut after the answer' if section.prune else ''}, SFT"
                if kind == "distill" else f"best vs worst of {g} samples per prompt by the signed rubric score, DPO "
                f"(beta {section.beta:g}) against the policy at the round's start")
        lines.append(f"{TITLES[kind]} round after RL step {when} ({len(steps)} round{'s' * (len(steps) != 1)}): "
                     f"{section.steps} step(s) x {section.tasks} prompts from {_sources(spec, kind)}; {what}")
    if lines:
        lines.append(f"held-out evaluation ({spec.train.eval_tasks} tasks) before and after each round")
    return lines


def _sources(spec: RunSpec, kind: str) -> str:
    from kpop.stages.checks import round_envs

    try:
        names = [e.name for e in round_envs(spec, kind)]
    except KeyError:
        names = []   # an unknown environment: the run checks report it
    return ", ".join(names) or "none of the run's environments"
