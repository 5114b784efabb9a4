"""Turns what a backend observed into one `SandboxStatus`, the same way for every backend.

Precedence, most specific first: a sandbox failure, then the wall clock, then memory, then the
CPU and file-size rlimits, then the process limit, then output overflow, then any other signal;
only a process that exited by itself within every limit is OK. Wrappers that report a child's
death by signal as exit code 128+N (bubblewrap, docker, sh) are decoded with `signal_of`.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from kpop.envs.sandbox.api import SandboxResult, SandboxStatus


@dataclass(frozen=True)
class Observed:
    exit_code: int | None  # exit status as the outermost wrapper reported it
    signal: int | None  # signal that ended the untrusted process, if known
    wall_s: float
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    output_overflow: bool = False
    oom: bool = False
    pids_limit_hit: bool = False
    error: str = ""


def signal_of(returncode: int | None, wrapped: bool) -> tuple[int | None, int | None]:
    """(exit_code, signal) from a returncode; `wrapped` decodes the 128+N convention."""
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, -returncode
    if wrapped and 128 < returncode < 128 + 65:
        return None, returncode - 128
    return returncode, None


def classify(obs: Observed, output_files: dict[str, bytes] | None = None) -> SandboxResult:
    status, detail = _status(obs)
    return SandboxResult(
        status=status,
        exit_code=obs.exit_code,
        stdout=obs.stdout.decode("utf-8", "replace"),
        stderr=obs.stderr.decode("utf-8", "replace"),
        output_files=output_files or {},
        wall_s=obs.wall_s,
        signal=obs.signal,
        detail=detail,
    )


def _status(obs: Observed) -> tuple[SandboxStatus, str]:
    if obs.error:
        return SandboxStatus.SANDBOX_ERROR, obs.error
    if obs.timed_out:
        return SandboxStatus.TIMEOUT, "wall-clock limit reached; killed"
    if obs.oom or (obs.signal == signal.SIGKILL and b"MemoryError" in obs.stderr):
        return SandboxStatus.OOM, "memory limit reached"
    if obs.signal == signal.SIGXCPU:
        return SandboxStatus.CPU_TIMEOUT, "CPU-time limit reached (SIGXCPU)"
    if obs.signal == signal.SIGXFSZ:
        return SandboxStatus.FILE_TOO_LARGE, "file-size limit reached (SIGXFSZ)"
    if obs.pids_limit_hit:
        return SandboxStatus.PIDS_LIMIT, "process-count limit reached (a fork failed)"
    if obs.output_overflow:
        return SandboxStatus.OUTPUT_TRUNCATED, "stdout/stderr passed max_output_bytes; killed"
    if obs.exit_code is None and obs.signal is not None:
        return SandboxStatus.KILLED, f"killed by signal {_signame(obs.signal)}"
    if obs.exit_code is not None and b"MemoryError" in obs.stderr[-4096:] and obs.exit_code != 0:
        return SandboxStatus.OOM, "memory limit reached (MemoryError)"
    if obs.exit_code not in (None, 0) and b"File too large" in obs.stderr[-4096:]:
        # Python ignores SIGXFSZ, so the rlimit surfaces as EFBIG and a failing exit instead.
        return SandboxStatus.FILE_TOO_LARGE, "file-size limit reached (EFBIG)"
    return SandboxStatus.OK, ""


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)
