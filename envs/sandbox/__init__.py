"""Sandboxed execution of untrusted (model-written) code. The contract is in `api`.

Typical use: `from kpop.envs.sandbox import run_python; result = await run_python(code, files=...)`.
"""

from kpop.envs.sandbox.api import (
    Sandbox,
    SandboxLimits,
    SandboxRequest,
    SandboxResult,
    SandboxStatus,
    run_command,
    run_python,
    run_request,
)

__all__ = [
    "Sandbox",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxResult",
    "SandboxStatus",
    "run_command",
    "run_python",
    "run_request",
]
