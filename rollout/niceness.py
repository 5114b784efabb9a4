"""Lowering the CPU priority of a whole process (engine and environment-worker actors).

Linux niceness belongs to a thread, not a process: `os.nice` in an actor's constructor changes
only the thread it runs on, while the actor's event loop and vLLM's threads may already run on
others. `yield_cpu(n)` raises every current thread of the process to niceness >= n; threads and
processes started later inherit it from their creator. It never lowers a niceness (that needs
privileges), so it is safe to call with any n >= 0.

Ray starts worker processes at niceness 15 (`worker_niceness`), which leaves no room below the
learner; kpop.launch starts Ray with worker niceness 0 (RAY_SYSTEM_CONFIG), so the learner keeps
priority 0 and only the processes that call this yield.
"""

from __future__ import annotations

import os


def thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:  # not Linux: niceness is per process there
        return [0]


def yield_cpu(niceness: int) -> None:
    for tid in thread_ids():
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:  # the thread ended meanwhile
            pass
