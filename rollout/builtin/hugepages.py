"""Tensors in memory backed by transparent huge pages (2 MiB), for the weights a decode step streams.

Why: a batch-1 decode step reads every weight once, and on 4 KiB pages a stream of ~300 MB walks
the page tables for every page. PyTorch's CPU allocator leaves memory on 4 KiB pages unless
`THP_MEM_ALLOC_ENABLE=1` is set before its first allocation, and even then it aligns to 4 KiB, so
only the 2 MiB-aligned interior of a tensor can be a huge page. Measured on the 2-core box (the
medium Llama of benchmarks/engine.py, two copies in one process, decode steps alternating): batch
1 12.4-13.2 ms per step against 13.2-13.8 on ordinary pages, 64 rows 67-73 against 69-77 ms; the
medium hybrid within the machine's noise. Caches stay in ordinary memory: they are allocated per
batch, and faulting in huge pages costs more than they save (64-row Llama end to end 585-643
against 697-760 tok/s).

Contract: `empty(shape, dtype)` is a CPU tensor in an anonymous mapping aligned to 2 MiB and
advised `MADV_HUGEPAGE` (the kernel backs it with huge pages where the machine's THP mode is
`madvise` or `always`; where it is `never`, or on a system without `madvise`, it is ordinary
memory: the same values, only slower; where no such mapping can be made, `empty` falls back to
`torch.empty`). The tensor keeps its mapping alive; the memory is returned
when the last tensor viewing it is freed. `place(t)` is a copy of `t` in such memory; it leaves
tensors under `MIN_BYTES` as they are (they fit in a few pages, and a huge page would take 2 MiB
for each). `enabled()` says whether the kernel offers huge pages to `madvise` at all.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import torch

HUGE_PAGE = 2 * 2**20
MIN_BYTES = HUGE_PAGE


def enabled() -> bool:
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and "[never]" not in mode


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    size = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
    try:
        buffer = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, OSError):  # no anonymous private mappings here, or none this large: ordinary memory
        return torch.empty(shape, dtype=dtype)
    whole = torch.frombuffer(buffer, dtype=torch.uint8)
    offset = -whole.data_ptr() % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE, offset, size)
    return whole[offset : offset + nbytes].view(dtype).view(shape)


def place(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cpu" or t.numel() * t.element_size() < MIN_BYTES:
        return t
    return empty(t.shape, t.dtype).copy_(t)
