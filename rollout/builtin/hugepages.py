"""Tensors in memory backed by transparent huge pages (2 MiB), for what a decode step streams.

Why: a batch-1 decode step reads every weight once, and on 4 KiB pages a stream of ~300 MB misses
the TLB on every page. PyTorch's CPU allocator leaves memory on 4 KiB pages unless
`THP_MEM_ALLOC_ENABLE=1` is set before its first allocation, and even then it aligns to 4 KiB, so
only the 2 MiB-aligned interior of each tensor can be a huge page. Measured on the 2-core box
(32 weights of 7-9 MB, the engine's blocked matrix-vector product, read back to back): 30-33 GB/s
on 4 KiB pages, 51-53 GB/s on huge pages; a plain `sum()` over 128 MiB 35-43 -> 68-72 GB/s.

Contract: `empty(shape, dtype)` is a CPU tensor in an anonymous mapping aligned to 2 MiB and
advised `MADV_HUGEPAGE` (the kernel backs it with huge pages where the machine's THP mode is
`madvise` or `always`; where it is `never`, or on a system without `madvise`, it is ordinary
memory: the same values, only slower). The tensor keeps its mapping alive; the memory is returned
when the last tensor viewing it is freed. `place(t)` is a copy of `t` in such memory and `zeros`
a zero tensor there; both leave tensors under `MIN_BYTES` in ordinary memory (they fit in a few
pages, and a huge page would take 2 MiB for each). `enabled()` says whether the
kernel offers huge pages to `madvise` at all.
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
    buffer = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = torch.frombuffer(buffer, dtype=torch.uint8)
    offset = -whole.data_ptr() % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE, offset, size)
    return whole[offset : offset + nbytes].view(dtype).view(shape)


def zeros(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor, in huge-page memory from `MIN_BYTES` on."""
    if math.prod(shape) * torch.empty((), dtype=dtype).element_size() < MIN_BYTES:
        return torch.zeros(shape, dtype=dtype)
    return empty(shape, dtype).zero_()


def place(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cpu" or t.numel() * t.element_size() < MIN_BYTES:
        return t
    return empty(t.shape, t.dtype).copy_(t)
