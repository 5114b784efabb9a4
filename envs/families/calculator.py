"""`calculator`: arithmetic questions answered with the help of a calculator tool.

The smallest verifiable multi-turn tool task, used by the quickstart: the user asks for `a op b`;
the model should call `calculator(expression)`, read the result from the tool observation and reply
`Answer: N`. Task score 1.0 when the final answer equals the exact value, else 0.0 (reward part
`task`, with `correct`, `format`, `used_tool`); the RunSpec's reward terms shape it on the final step
like every other family (kpop.envs.rewards.shape_reward; the reference call for `tool_sequence` is
the one calculator call of the question's expression), so the reward lies in [-1, 1]. The tool
evaluates integer +, -, * expressions only (parsed with `ast`, never `eval`), so it needs no sandbox.
"""

from __future__ import annotations

import ast
import operator
import random
import re

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.contract import Action, AgentEnv, Message, StepInfo, StepResult, Task
from kpop.envs.registry import register_env
from kpop.envs.rewards.compose import EpisodeView, shape_reward

SYSTEM = "Use the calculator tool, then reply with Answer: <number>."
TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an integer arithmetic expression with + - *.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def evaluate(expression: str) -> int:
    """Integer +, -, * only; raises ValueError for anything else (including huge inputs)."""
    if len(expression) > 64:
        raise ValueError("expression longer than 64 characters")

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError("only integers with + - * are supported")

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    return walk(tree.body)


@register_env("calculator")
class CalculatorEnv(AgentEnv):
    reward_range = (-1.0, 1.0)  # shaping terms may subtract from the 0/1 task score
    reward_parts = ("task", "correct", "format", "used_tool")
    answer_pattern = _ANSWER.pattern  # graded: the first "Answer: N" of the final turn

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        min_operand: int = Field(10, ge=0, le=10**6, description="Smallest operand.")
        max_operand: int = Field(99, ge=1, le=10**6, description="Largest operand.")
        ops: str = Field("+-*", min_length=1, pattern=r"^[+\-*]+$", description="Operators to draw from.")
        reference_tool_rate: float = Field(1.0, ge=0.0, le=1.0, description="Share of tasks on which the reference solver calls the tool; on the others it answers from memory (always correctly), so cold-start data built from it teaches when to skip the tool.")
        reference_recheck_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of tasks on which the reference solver's answer goes on to re-check itself ('Answer: N' then 'Check: a op b = N'); the grade reads the first answer only, so the re-check is correct but useless text that shortest-correct distillation cuts.")

    def __init__(self, min_operand: int = 10, max_operand: int = 99, ops: str = "+-*", reference_tool_rate: float = 1.0,
                 reference_recheck_rate: float = 0.0) -> None:
        super().__init__()
        if min_operand > max_operand:
            raise ValueError(f"min_operand {min_operand} is larger than max_operand {max_operand}")
        self.min_operand, self.max_operand, self.ops = min_operand, max_operand, ops
        self.reference_tool_rate, self.reference_recheck_rate = reference_tool_rate, reference_recheck_rate
        self.reference_uses_tool, self.reference_rechecks = True, False
        self.expression, self.answer = "", 0
        self.tool_result: str | None = None
        self.turns = 0
        self.view = EpisodeView()

    def make_task(self, seed, options):
        rng = random.Random(seed)
        a, b = rng.randint(self.min_operand, self.max_operand), rng.randint(self.min_operand, self.max_operand)
        self.expression = f"{a}{rng.choice(self.ops)}{b}"
        self.reference_uses_tool = rng.random() < self.reference_tool_rate
        # its own stream, so a recheck rate leaves the tasks and the tool choice of each seed unchanged
        self.reference_rechecks = random.Random(f"recheck:{seed}").random() < self.reference_recheck_rate
        self.answer = evaluate(self.expression)
        self.tool_result, self.turns = None, 0
        self.view = EpisodeView(reference_calls=[("calculator", {"expression": self.expression})])
        messages = [Message("system", SYSTEM), Message("user", f"What is {self.expression}?")]
        return Task(task_id=f"calculator-{seed}", messages=messages, tools=[TOOL])

    def reference_action(self) -> str:
        if self.reference_uses_tool and self.tool_result is None:
            return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{self.expression}"}}}}</tool_call>'
        answer = self.tool_result if self.reference_uses_tool else str(self.answer)
        return f"Answer: {answer}\nCheck: {self.expression} = {answer}" if self.reference_rechecks else f"Answer: {answer}"

    async def astep(self, action: Action) -> StepResult:
        self.turns += 1
        self.view.texts.append(action.text)
        if action.parse_errors:
            return self._observe([Message("tool", "error: " + "; ".join(action.parse_errors), name="calculator")])
        if action.tool_calls:
            self.view.calls.extend((c.name, c.arguments) for c in action.tool_calls)
            replies = [Message("tool", self._call(c.name, c.arguments), name=c.name, tool_call_id=c.id) for c in action.tool_calls]
            return self._observe(replies)
        match = _ANSWER.search(action.text)
        correct = float(match is not None and int(match.group(1)) == self.answer)
        parts = {"task": correct, "correct": correct, "format": float(match is not None),
                 "used_tool": float(self.tool_result is not None)}
        reward, parts = shape_reward(correct, parts, self.view, self.reward_terms)
        return StepResult([], reward, True, False, StepInfo(parts, {"expected": self.answer}))

    def _call(self, name: str, arguments: dict) -> str:
        if name != "calculator":
            return f"error: unknown tool {name!r}; available: calculator"
        expression = arguments.get("expression")
        if not isinstance(expression, str):
            return "error: 'expression' must be a string"
        try:
            self.tool_result = str(evaluate(expression))
        except ValueError as exc:
            return f"error: {exc}"
        return self.tool_result

    def _observe(self, messages: list[Message]) -> StepResult:
        return StepResult(messages, 0.0, False, False, StepInfo({"correct": 0.0, "format": 0.0, "used_tool": float(self.tool_result is not None)}))
