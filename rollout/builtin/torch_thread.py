"""The one OS thread on which a process runs the built-in engine's torch work.

Why one thread: PyTorch's CPU ops run their parallel loops on libgomp (GNU OpenMP), which gives each
OS thread that starts a parallel region its own team of worker threads, kept for that thread's
lifetime. Once the teams of a process hold more threads than it has CPUs, libgomp throttles every
worker: between two parallel regions it spins ~100 times instead of ~300,000 (about 3 ms) and then
sleeps on a futex, so each parallel op pays a wake-up. A decode step is hundreds of short parallel
ops. Measured on the 2-core box (medium Llama of benchmarks/engine.py, 64-token generations on a
worker thread): 78 -> 52 tok/s at 1 row and ~580 -> 440-530 at 64 rows once another thread had run
a single parallel matmul; single ops at 64 rows: an add 4 -> 15-57 us, a softmax 16 -> 60-70 us.

Contract:
- `call(fn, *args, **kwargs)` runs `fn(*args, **kwargs)` on the thread and returns its result or raises its exception;
  from the thread itself it runs `fn` inline (no deadlock).
- `await run(fn, *args, **kwargs)` is the same from a coroutine, without blocking the event loop.
- `fn` runs with the caller's `torch.get_num_threads()`: OpenMP thread counts are per OS thread,
  so the thread follows whoever hands it work.
- One thread per process, started on first use and never stopped; everything that uses it shares
  it, so two engines in one process never step at the same time (they would share the cores anyway).
  Other code that runs torch ops in a process serving an engine (a benchmark's baselines, weight
  staging) belongs here too, or the throttling comes back.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread_ident: int | None = None


def _record_ident() -> None:
    global _thread_ident
    _thread_ident = threading.get_ident()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kpop-torch", initializer=_record_ident)
        return _executor


def on_torch_thread() -> bool:
    return _thread_ident is not None and threading.get_ident() == _thread_ident


def _with_threads(num_threads: int, fn: Callable[..., T], *args, **kwargs) -> T:
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return fn(*args, **kwargs)


def call(fn: Callable[..., T], *args, **kwargs) -> T:
    if on_torch_thread():
        return fn(*args, **kwargs)
    return _get_executor().submit(_with_threads, torch.get_num_threads(), fn, *args, **kwargs).result()


async def run(fn: Callable[..., T], *args, **kwargs) -> T:
    if on_torch_thread():
        return fn(*args, **kwargs)
    task = functools.partial(_with_threads, torch.get_num_threads(), fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_get_executor(), task)
