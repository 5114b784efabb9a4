"""Runs a submission against a problem's hidden tests in the sandbox (kpop.envs.sandbox API).

The only coupling to the sandbox is `CodeRunner`: an async callable with the signature of
`kpop.envs.sandbox.api.run_python`; `SANDBOX_RUNNER` is that function, and tests may pass another.
The harness (main.py) reads a one-time nonce from stdin before it imports the submission
(solution.py), then runs `check(entry_point)` in the submission's namespace and prints the nonce.
A submission passes only if the run exits 0 within the limits *and* printed the nonce, so exiting
early with status 0 (sys.exit, os._exit) does not pass. Limits left unset are the sandbox pool's
(a run's `sandbox.limits`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kpop.envs.families.coding.problems import Problem
from kpop.envs.sandbox.api import SandboxLimits, SandboxResult, run_python

CodeRunner = Callable[..., Awaitable[SandboxResult]]
SANDBOX_RUNNER: CodeRunner = run_python
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)

HARNESS = '''import importlib.util, sys
def _kpop_main():
    nonce = sys.stdin.readline().strip()
    spec = importlib.util.spec_from_file_location("solution", "solution.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["solution"] = module
    spec.loader.exec_module(module)
    namespace = vars(module)
    exec(compile(open("hidden_tests.py").read(), "hidden_tests.py", "exec"), namespace)
    namespace["check"](namespace[{entry!r}])
    sys.stdout.write("\\nKPOP-PASS-" + nonce + "\\n")
_kpop_main()
'''


@dataclass(frozen=True)
class CodeVerdict:
    passed: bool
    status: str
    details: dict[str, Any]


def extract_code(text: str, problem: Problem) -> str | None:
    """The last fenced code block (or the whole text if it has a `def`); a HumanEval completion that
    lacks the function's `def` is appended to the prompt, as in HumanEval's own harness."""
    blocks = _BLOCK.findall(text)
    code = blocks[-1] if blocks else (text if "def " in text else None)
    if code is None or not code.strip():
        return None
    if problem.prompt and not re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\b", code, re.MULTILINE):
        code = problem.prompt + code
    return code


async def verify(code: str, problem: Problem, runner: CodeRunner | None = None,
                 limits: SandboxLimits | None = None) -> CodeVerdict:
    nonce = secrets.token_hex(16)
    files = {"solution.py": code, "hidden_tests.py": problem.tests}
    result = await (runner or SANDBOX_RUNNER)(HARNESS.format(entry=problem.entry_point), files=files, limits=limits, stdin=nonce + "\n")
    passed = result.ok and f"KPOP-PASS-{nonce}" in result.stdout
    details = {"status": result.status.value, "exit_code": result.exit_code, "stderr_tail": result.stderr[-600:], "detail": result.detail}
    return CodeVerdict(passed, result.status.value, details)
