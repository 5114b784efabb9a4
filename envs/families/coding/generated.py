"""Generated coding problems: parameterised function templates, as "write it" or "fix the bug" tasks.

Each template has a statement, a reference body, a bug (a textual mutation of the reference) and an
input generator. Hidden tests are the reference's outputs on seeded inputs, computed by running the
reference (our own code) in this process. A "fix" task is kept only if its bug fails at least one
hidden test; otherwise the seed falls back to a "write" task, so every fix task is a real fix.

`make_problem(seed, templates, fix_rate, num_tests)` is a pure function of its arguments; its
defaults (every template, half the tasks posed as fixes, 12 hidden tests) give the problems this
module always gave. Fewer templates, no fixes or fewer tests make the family easier to learn.
`lookup_solution` is a submission that passes a problem's hidden tests without computing anything:
a table from each tested input to its expected output (the coding family's "answers from memory").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kpop.envs.families.coding.problems import Problem


@dataclass(frozen=True)
class Template:
    name: str
    statement: str  # format fields: the template's params
    source: str  # the reference module, same format fields
    bug: tuple[str, str]  # replace bug[0] with bug[1] in the formatted source
    params: Callable[[random.Random], dict[str, Any]]
    inputs: Callable[[random.Random], tuple]


def _ints(rng: random.Random, n: int = 8) -> list[int]:
    return [rng.randint(-30, 30) for _ in range(rng.randint(0, n))]


TEMPLATES = [
    Template("sum_multiples", "Write `sum_multiples(nums)` returning the sum of the numbers in the list `nums` that are divisible by {k}.",
             "def sum_multiples(nums):\n    return sum(x for x in nums if x % {k} == 0)\n", ("== 0", "== 1"),
             lambda r: {"k": r.randint(2, 7)}, lambda r: (_ints(r),)),
    Template("longest_run", "Write `longest_run(s)` returning the length of the longest run of identical consecutive characters in the string `s` (0 for an empty string).",
             "def longest_run(s):\n    best = cur = 0\n    prev = None\n    for ch in s:\n        cur = cur + 1 if ch == prev else 1\n        prev = ch\n        best = max(best, cur)\n    return best\n",
             ("cur + 1 if", "cur if"), lambda r: {}, lambda r: ("".join(r.choice("aab") for _ in range(r.randint(0, 12))),)),
    Template("rotate_right", "Write `rotate_right(items)` returning a new list: the list `items` rotated right by {k} positions (wrapping around).",
             "def rotate_right(items):\n    if not items:\n        return []\n    k = {k} % len(items)\n    return items[-k:] + items[:-k] if k else list(items)\n",
             ("items[-k:] + items[:-k]", "items[k:] + items[:k]"), lambda r: {"k": r.randint(1, 9)}, lambda r: (_ints(r, 7),)),
    Template("clamp_all", "Write `clamp_all(nums)` returning a list where each number of `nums` is clamped to the range [{lo}, {hi}].",
             "def clamp_all(nums):\n    return [min(max(x, {lo}), {hi}) for x in nums]\n", ("min(max(x, {lo}), {hi})", "max(min(x, {lo}), {hi})"),
             lambda r: {"lo": r.randint(-10, 0), "hi": r.randint(1, 10)}, lambda r: (_ints(r),)),
    Template("word_counts", "Write `word_counts(text)` returning a dict that maps each lower-cased word of `text` (split on whitespace) to the number of times it occurs.",
             "def word_counts(text):\n    counts = {{}}\n    for word in text.lower().split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts\n",
             ("counts.get(word, 0) + 1", "1"), lambda r: {}, lambda r: (" ".join(r.choice(["a", "B", "b", "c", "A"]) for _ in range(r.randint(0, 9))),)),
    Template("running_max", "Write `running_max(nums)` returning the list whose i-th element is the largest of nums[0..i].",
             "def running_max(nums):\n    out = []\n    for x in nums:\n        out.append(x if not out or x > out[-1] else out[-1])\n    return out\n",
             ("x > out[-1]", "x < out[-1]"), lambda r: {}, lambda r: (_ints(r),)),
    Template("caesar", "Write `caesar(s)` that shifts every lowercase ASCII letter of `s` forward by {k} places in the alphabet (z wraps to a) and leaves every other character unchanged.",
             "def caesar(s):\n    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)\n",
             ("% 26", "% 25"), lambda r: {"k": r.randint(1, 25)}, lambda r: ("".join(r.choice("xyzabc !Q") for _ in range(r.randint(0, 12))),)),
    Template("second_largest", "Write `second_largest(nums)` returning the second largest distinct value in `nums`, or None when there are fewer than two distinct values.",
             "def second_largest(nums):\n    values = sorted(set(nums))\n    return values[-2] if len(values) >= 2 else None\n",
             ("values[-2]", "values[1]"), lambda r: {}, lambda r: (_ints(r, 6),)),
    Template("balanced", "Write `balanced(s)` returning True when the brackets ()[]{{}} in `s` are balanced and properly nested (other characters are ignored), else False.",
             "def balanced(s):\n    pairs = {{')': '(', ']': '[', '}}': '{{'}}\n    stack = []\n    for c in s:\n        if c in '([{{':\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack\n",
             ("return not stack", "return True"), lambda r: {}, lambda r: ("".join(r.choice("()[]{}x") for _ in range(r.randint(0, 8))),)),
]


def _tests(fn: Callable, cases: list[tuple]) -> str:
    lines = ["def check(candidate):"]
    lines += [f"    assert candidate(*{args!r}) == {fn(*args)!r}, {f'input {args!r}'!r}" for args in cases]
    return "\n".join(lines) + "\n"


def _load(source: str, name: str) -> Callable:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<{name}>", "exec"), namespace)  # noqa: S102 - our own template code, never model output
    return namespace[name]


TEMPLATE_NAMES = tuple(t.name for t in TEMPLATES)


def make_problem(seed: int, templates: tuple[str, ...] = TEMPLATE_NAMES, fix_rate: float = 0.5, num_tests: int = 12) -> Problem:
    """The problem of `seed`, drawn from the named templates; `fix_rate` of the draws are posed as
    fixes (where the bug fails a test), each problem has `num_tests` hidden tests."""
    rng = random.Random(f"coding-generated:{seed}")
    template = rng.choice([t for t in TEMPLATES if t.name in templates])
    values = template.params(rng)
    source = template.source.format(**values)
    reference = _load(source, template.name)
    cases = [template.inputs(rng) for _ in range(num_tests)]
    tests = _tests(reference, cases)
    bug_from, bug_to = (part.format(**values) for part in template.bug)
    buggy_source = source.replace(bug_from, bug_to)
    statement = template.statement.format(**values)
    answers = tuple((args[0], reference(*args)) for args in cases)
    if rng.random() < fix_rate and buggy_source != source:
        buggy = _load(buggy_source, template.name)
        if any(_safe(buggy, args) != _safe(reference, args) for args in cases):
            text = (f"This function should do the following: {statement[len('Write '):]}\nIt has a bug. "
                    f"Reply with the fixed function in one ```python code block.\n\n```python\n{buggy_source}```")
            return Problem(f"generated/fix/{template.name}/{seed}", "fix", text, template.name, tests, source, answers=answers)
    text = f"{statement} Reply with the function in one ```python code block."
    return Problem(f"generated/write/{template.name}/{seed}", "write", text, template.name, tests, source, answers=answers)


def lookup_solution(problem: Problem) -> str:
    """The function as a table of the hidden tests' answers, keyed by the repr of the argument
    (every template takes one): it passes those tests and almost no others."""
    header = problem.reference.splitlines()[0]  # "def name(arg):", as the reference writes it
    arg = header[header.index("(") + 1:header.index(")")]
    table: dict[str, Any] = {}
    for value, expected in problem.answers:
        table.setdefault(repr(value), expected)
    entries = ", ".join(f"{key!r}: {expected!r}" for key, expected in table.items())
    return f"{header}\n    return {{{entries}}}[repr({arg})]\n"


def _safe(fn: Callable, args: tuple) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a buggy variant may crash; that counts as a different answer
        return ("raised", type(exc).__name__)
