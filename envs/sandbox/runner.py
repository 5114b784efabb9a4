"""Runs one already-wrapped command as a child process, with wall clock and output caps.

Contract: `run_process` never raises for the child's behaviour. It returns a `RawOutcome` once the
child has exited or was killed, and the caller turns that into a `SandboxResult` (classify.py).
Invariants: the child leads a new session, so `kill` reaches every process that stayed in it;
stdout and stderr are drained concurrently (no pipe deadlock) and at most `max_output_bytes` of
each is kept; passing the cap or the wall clock kills the child at once (the rest is not worth
the CPU). `on_started(pid)` runs before any untrusted code does, when the wrapper supports it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

_CHUNK = 65536


@dataclass
class RawOutcome:
    returncode: int | None  # as asyncio reports it: negative for a signal
    stdout: bytes
    stderr: bytes
    wall_s: float
    timed_out: bool = False
    output_overflow: bool = False
    spawn_error: str = ""


class _Capture:
    """Keeps the first `cap` bytes of a stream and flags overflow."""

    def __init__(self, cap: int, on_overflow: Callable[[], None]) -> None:
        self.cap, self.buf, self.overflow, self._on_overflow = cap, bytearray(), False, on_overflow

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            room = self.cap - len(self.buf)
            self.buf += chunk[: max(room, 0)]
            if len(chunk) > room and not self.overflow:
                self.overflow = True
                self._on_overflow()


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's whole session/process group; ignore an already-gone child."""
    for fn, target in ((os.killpg, proc.pid), (os.kill, proc.pid)):
        try:
            fn(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


async def run_process(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    stdin: bytes | None,
    wall_s: float,
    max_output_bytes: int,
    pass_fds: Sequence[int] = (),
    on_started: Callable[[int], Awaitable[None]] | None = None,
) -> RawOutcome:
    start = time.perf_counter()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=cwd, start_new_session=True, pass_fds=tuple(pass_fds), close_fds=True,
        )
    except OSError as exc:
        return RawOutcome(None, b"", b"", time.perf_counter() - start, spawn_error=f"cannot start {argv[0]!r}: {exc}")
    return await supervise(proc, stdin=stdin, wall_s=wall_s, max_output_bytes=max_output_bytes, on_started=on_started, start=start)


async def supervise(
    proc: asyncio.subprocess.Process,
    *,
    stdin: bytes | None,
    wall_s: float,
    max_output_bytes: int,
    on_started: Callable[[int], Awaitable[None]] | None = None,
    start: float | None = None,
) -> RawOutcome:
    """Feeds stdin, drains the output within the caps, enforces the wall clock from `start`, reaps."""
    start = time.perf_counter() if start is None else start
    out = _Capture(max_output_bytes, lambda: kill_group(proc))
    err = _Capture(max_output_bytes, lambda: kill_group(proc))
    timed_out = False
    drains = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
    feeder = asyncio.ensure_future(_feed(proc, stdin)) if stdin else None
    try:
        if on_started is not None:
            await asyncio.wait_for(on_started(proc.pid), timeout=wall_s)
        remaining = wall_s - (time.perf_counter() - start)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(remaining, 0.001))
        except TimeoutError:
            timed_out = True
    finally:
        # Also ends background processes the child left in its session, which hold the pipes.
        kill_group(proc)
        rc = await proc.wait()
        try:
            await asyncio.wait_for(drains, timeout=2.0)
        except TimeoutError:
            drains.cancel()
        if feeder is not None:
            feeder.cancel()
    return RawOutcome(rc, bytes(out.buf), bytes(err.buf), time.perf_counter() - start, timed_out, out.overflow or err.overflow)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass
