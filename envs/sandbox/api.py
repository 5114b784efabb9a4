"""The sandbox contract: what a caller asks for, what limits apply, what comes back.

Every backend (bubblewrap, Docker, the unsafe plain process) implements `Sandbox.run` with the
same meaning, so callers never depend on which one runs:

* The request's `files` are written into a fresh, private, writable work directory, which is the
  current directory of the command and is deleted afterwards. Nothing else is writable, except a
  small private /tmp, and nothing reaches the network.
* `run` never raises for anything the untrusted code does; the result's `status` says how it
  ended. Only a broken set-up (backend missing, bad request) gives `SandboxStatus.SANDBOX_ERROR`.
* `status` is `OK` whenever the process exited by itself within every limit, whatever its exit
  code: a failing unit test is `OK` with `exit_code == 1`. `result.ok` means OK and exit code 0.
* stdout/stderr are decoded as UTF-8 (invalid bytes replaced) and capped at
  `limits.max_output_bytes` each; going past the cap kills the run with `OUTPUT_TRUNCATED`.

These types are stable: add optional fields only.

`count_executions()` counts the executions `run_request` (so `run_python` / `run_command`) starts
inside a block, including in tasks created there (a context variable: concurrent episodes on one
event loop each count their own): the agent loop reports them per episode (`sandbox_runs`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence


class SandboxStatus(str, enum.Enum):  # noqa: UP042 (values compare and serialise as plain strings)
    OK = "ok"  # exited by itself within the limits (any exit code)
    TIMEOUT = "timeout"  # wall-clock limit reached, killed
    CPU_TIMEOUT = "cpu_timeout"  # CPU-time limit reached (SIGXCPU / SIGKILL by RLIMIT_CPU)
    OOM = "oom"  # memory limit reached
    FILE_TOO_LARGE = "file_too_large"  # a written file passed max_file_bytes (SIGXFSZ)
    PIDS_LIMIT = "pids_limit"  # hit the process-count limit and did not exit by itself
    OUTPUT_TRUNCATED = "output_truncated"  # stdout or stderr passed max_output_bytes, killed
    KILLED = "killed"  # killed by a signal not explained by a limit
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; see `detail`


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one execution. Sizes in bytes, times in seconds."""

    wall_s: float = 5.0
    cpu_s: float = 5.0
    memory_bytes: int = 512 * 2**20
    max_processes: int = 64
    max_file_bytes: int = 16 * 2**20
    max_output_bytes: int = 1 * 2**20
    max_output_files_bytes: int = 16 * 2**20

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_bytes", "max_processes", "max_file_bytes", "max_output_bytes", "max_output_files_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxRequest:
    """One execution: either `command` (argv, resolved inside the sandbox) or python `code`.

    `code` is written to `main.py` in the work directory and run as `python3 main.py`, so
    modules given in `files` are importable.
    `files` maps relative paths (no `..`, no absolute paths) to contents. `outputs` lists glob
    patterns, relative to the work directory, of files to return in `SandboxResult.output_files`.
    """

    command: Sequence[str] | None = None
    code: str | None = None
    files: Mapping[str, bytes | str] = field(default_factory=dict)
    stdin: bytes | str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    outputs: Sequence[str] = ()
    limits: SandboxLimits | None = None  # None: the pool's (spec's) default limits

    def __post_init__(self) -> None:
        if (self.command is None) == (self.code is None):
            raise ValueError("SandboxRequest needs exactly one of `command` or `code`")
        if self.command is not None and (isinstance(self.command, str) or not self.command):
            raise ValueError("SandboxRequest.command must be a non-empty list of strings")


@dataclass(frozen=True)
class SandboxResult:
    status: SandboxStatus
    exit_code: int | None  # None when killed by a signal or never started
    stdout: str = ""
    stderr: str = ""
    output_files: dict[str, bytes] = field(default_factory=dict)
    wall_s: float = 0.0
    signal: int | None = None  # the signal that ended the process, if any
    detail: str = ""  # human-readable explanation of a non-OK status

    @property
    def ok(self) -> bool:
        return self.status is SandboxStatus.OK and self.exit_code == 0

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "wall_s": round(self.wall_s, 4),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "output_files": {k: v.decode("utf-8", "replace") for k, v in self.output_files.items()},
            "detail": self.detail,
        }


@runtime_checkable
class Sandbox(Protocol):
    """A backend or a pool of them. `run` is safe to call concurrently."""

    name: str

    async def run(self, request: SandboxRequest) -> SandboxResult: ...

    async def close(self) -> None: ...


async def run_python(
    code: str,
    files: Mapping[str, bytes | str] | None = None,
    limits: SandboxLimits | None = None,
    stdin: bytes | str | None = None,
    outputs: Sequence[str] = (),
) -> SandboxResult:
    """Run python `code` on the process-wide default pool (see `kpop.envs.sandbox.default`)."""
    request = SandboxRequest(code=code, files=dict(files or {}), limits=limits, stdin=stdin, outputs=tuple(outputs))
    return await run_request(request)


async def run_command(
    command: Sequence[str],
    files: Mapping[str, bytes | str] | None = None,
    limits: SandboxLimits | None = None,
    stdin: bytes | str | None = None,
    outputs: Sequence[str] = (),
) -> SandboxResult:
    """Run argv `command` on the process-wide default pool."""
    request = SandboxRequest(command=tuple(command), files=dict(files or {}), limits=limits, stdin=stdin, outputs=tuple(outputs))
    return await run_request(request)


_executions: ContextVar[list[int] | None] = ContextVar("kpop_sandbox_executions", default=None)


@contextmanager
def count_executions() -> Iterator[list[int]]:
    """A one-element list holding the number of executions started inside the block so far."""
    counter = [0]
    token = _executions.set(counter)
    try:
        yield counter
    finally:
        _executions.reset(token)


async def run_request(request: SandboxRequest) -> SandboxResult:
    from kpop.envs.sandbox.default import (
        default_pool,  # lazy: the pool pulls in the backends
    )

    counter = _executions.get()
    if counter is not None:
        counter[0] += 1
    return await default_pool().run(request)
