"""kpop.rollout.builtin.hugepages: 2 MiB-aligned, MADV_HUGEPAGE-advised tensors for what decoding streams,
and the engine's weights and packed weights placed there."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from kpop.rollout.builtin import hugepages
from kpop.rollout.builtin.packed import fused_linear
from kpop.rollout.builtin.tiny_models import tiny_llama_dir
from kpop.rollout.builtin.weights import load_model

needs_thp = pytest.mark.skipif(not hugepages.enabled(), reason="the kernel offers no transparent huge pages to madvise")


def _mapping(ptr: int) -> tuple[int, int, str] | None:
    """(start, end, VmFlags) of this process's mapping holding address `ptr`."""
    found = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                found = (start, end) if start <= ptr < end else None
            elif found and line.startswith("VmFlags:"):
                return (*found, line)
    return None


def _advised(t: torch.Tensor) -> bool:
    mapping = _mapping(t.data_ptr())
    return mapping is not None and " hg" in mapping[2]


def test_empty_is_aligned_writable_and_sized():
    t = hugepages.empty((3, 5, 2**18), torch.float32)
    assert t.shape == (3, 5, 2**18) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.data_ptr() % hugepages.HUGE_PAGE == 0
    t.copy_(torch.arange(t.numel(), dtype=torch.float32).view(t.shape))
    assert t[2, 4, -1].item() == t.numel() - 1
    b = hugepages.empty((7,), torch.bfloat16)
    b.fill_(1.5)
    assert b.sum().item() == 10.5


@needs_thp
def test_empty_memory_is_advised_for_huge_pages():
    assert _advised(hugepages.empty((2**21,), torch.float32))
    assert not _advised(torch.ones(2**21))  # the allocator's own memory is not (what this module is for)


def test_memory_lives_while_a_view_does_and_is_unmapped_after():
    t = hugepages.empty((2**20,), torch.float32).zero_()
    start = t.data_ptr()
    view = t[10:20]
    del t
    gc.collect()
    view += 2.0
    assert _mapping(start) is not None and view.sum().item() == 20.0
    del view
    gc.collect()
    assert _mapping(start) is None


def test_place_keeps_small_tensors_in_ordinary_memory():
    small = torch.randn(100)
    assert hugepages.place(small) is small
    big = torch.randn(2**20)  # 4 MiB
    placed = hugepages.place(big)
    assert placed is not big and torch.equal(placed, big) and placed.data_ptr() % hugepages.HUGE_PAGE == 0


def test_placing_falls_back_to_ordinary_memory_when_no_mapping_can_be_made(monkeypatch):
    import mmap

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    big = torch.randn(2**20)
    placed = hugepages.place(big)
    assert placed is not big and torch.equal(placed, big)


@needs_thp
def test_the_engine_s_weights_and_packed_weights_are_advised(tmp_path):
    model = load_model(tiny_llama_dir(tmp_path, hidden=768, heads=12, kv_heads=12, layers=1))
    attn = model.model.layers[0].self_attn
    assert _advised(attn.o_proj.weight)  # 768 x 768 fp32: 2.25 MiB
    assert not _advised(model.model.norm.weight)
    layers = [nn.Linear(1024, 1024, bias=False) for _ in range(2)]
    fused_linear(layers[0], "pair", layers, torch.randn(1, 1024))
    whole = layers[0]._kpop_packed["pair.weight"][0]
    assert _advised(whole) and layers[1].weight.data_ptr() == whole[1024:].data_ptr()
