"""A MoE layer's several rows natively (`native.moe_dispatch`, `native.moe_combine`, and
`moe_decode`'s path through them) against torch ops written out independently: a stable argsort,
bincount and gather; `index_add_` into float32 zeros, `.to`, two adds. Bit for bit, in float32 and
bfloat16, top-2 and top-3, on 1 and 2 threads; the oneDNN expert copies checked once a layer still
follow in-place weight updates."""

from __future__ import annotations

import pytest
import torch

from kpop.models.layers.moe import MoE
from kpop.rollout.builtin import moe_decode, native, onednn
from kpop.rollout.builtin.gated_mlp import gated_mlp

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")

DTYPES = [torch.float32, torch.bfloat16]


def _routes(rows: int, k: int, experts: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(rows)])
    idx[: rows // 2, 0] = 3  # one expert's load uneven; others may get none
    return idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,k", [(1, 2), (5, 2), (64, 2), (9, 3)])
def test_dispatch_sorts_pairs_by_expert_stably(dtype, rows, k):
    experts, h = 8, 40
    idx = _routes(rows, k, experts, seed=rows)
    x = torch.randn(rows, h).to(dtype)
    counts, pos, gathered = native.moe_dispatch(x, idx, experts)
    order = idx.flatten().argsort(stable=True)
    assert counts == torch.bincount(idx.flatten(), minlength=experts).tolist()
    assert torch.equal(gathered, x[order // k])
    assert torch.equal(pos.flatten()[order], torch.arange(rows * k))  # pos inverts the sort


def test_dispatch_rejects_an_expert_id_out_of_range():
    x, idx = torch.zeros(3, 8), torch.tensor([[0, 1], [2, 8], [1, 0]])
    with pytest.raises(ValueError, match="outside"):
        native.moe_dispatch(x, idx, 8)
    with pytest.raises(ValueError):
        native.moe_dispatch(x, idx.int(), 8)


def _torch_combine(blocks, idx, weights, shared, residual, dtype):
    """MoE's several-row sum as torch ops: the sorted blocks weighted, index_add_ in sorted order."""
    order = idx.flatten().argsort(stable=True)
    tokens = order // idx.shape[1]
    out = torch.zeros(idx.shape[0], blocks[0].shape[1] if blocks[0] is not None else blocks[1].shape[1])
    live = torch.cat([b for b in blocks if b is not None])
    out = out.index_add_(0, tokens, live.float() * weights.flatten()[order][:, None]).to(dtype)
    if shared is not None:
        out = out + shared
    return out if residual is None else residual + out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,k", [(3, 2), (64, 2), (17, 3)])
@pytest.mark.parametrize("with_shared,with_residual", [(True, True), (False, False), (True, False)])
def test_combine_rounds_where_the_torch_ops_round(dtype, rows, k, with_shared, with_residual, threads):
    experts, h = 8, 70  # h past one 64-value block and not a multiple of 16: the tails run
    gen = torch.Generator().manual_seed(rows + k)
    idx = _routes(rows, k, experts, seed=rows + 1)
    counts = torch.bincount(idx.flatten(), minlength=experts).tolist()
    _, pos, _ = native.moe_dispatch(torch.zeros(rows, 1, dtype=dtype), idx, experts)
    blocks = [torch.randn(n, h, generator=gen).to(dtype) if n else None for n in counts]
    weights = torch.rand(rows, k, generator=gen) * 2.5
    shared = torch.randn(rows, h, generator=gen).to(dtype) if with_shared else None
    residual = torch.randn(rows, h, generator=gen).to(dtype) * 4 if with_residual else None
    got = native.moe_combine(blocks, counts, idx, pos, weights, shared, residual)
    assert got.dtype == dtype
    assert torch.equal(got, _torch_combine(blocks, idx, weights, shared, residual, dtype))


def _moe(seed: int, dtype: torch.dtype, hidden: int, inner: int, k: int = 2) -> MoE:
    torch.manual_seed(seed)
    groups = (4, 2) if k == 2 else (None, None)
    return MoE(hidden_size=hidden, num_experts=8, top_k=k, moe_intermediate_size=inner, num_shared_experts=1,
               n_group=groups[0], topk_group=groups[1], routed_scaling_factor=2.5).eval().to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,inner,k", [(32, 24, 2), (512, 512, 2), (64, 32, 3)])
@pytest.mark.parametrize("rows", [2, 16, 64])
def test_several_rows_native_equal_the_torch_path(dtype, hidden, inner, k, rows):
    """`moe_forward`'s native rows against its torch path on the same routing (oneDNN expert copies
    at hidden 512, including one-row float32 blocks, which `project` keeps off oneDNN)."""
    moe = _moe(0, dtype, hidden, inner, k)
    x, residual = torch.randn(rows, hidden).to(dtype), torch.randn(rows, hidden).to(dtype)
    with torch.inference_mode():
        idx, weights = native.route_rows(x, moe.gate) if native.routable(moe.gate, dtype) else moe.gate(x)[:2]
        got = moe_decode._rows_native(moe, x, idx, weights, residual)
        want = residual + (moe_decode._tokens(moe, x, idx, weights).to(dtype) + gated_mlp(moe.shared_experts, x))
        assert torch.equal(got, want)
        torch.testing.assert_close(moe_decode.moe_forward(moe, x[:, None], residual[:, None])[:, 0].float(),
                                   (residual + moe(x)[0]).float(), rtol=0, atol=1e-4 if dtype == torch.float32 else 0.07)


@pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN")
def test_expert_copies_checked_once_a_layer_follow_updates():
    moe, new = _moe(0, torch.float32, 512, 512), _moe(1, torch.float32, 512, 512)
    x = torch.randn(16, 512)
    with torch.inference_mode():
        torch.testing.assert_close(moe_decode.moe_forward(moe, x), moe(x)[0], rtol=0, atol=1e-4)
    state, experts = moe.__dict__["_kpop_experts"]
    assert experts.packs is not None and len(experts.packs) == 8
    with torch.no_grad():
        moe.experts[5].down_proj.weight.copy_(new.experts[5].down_proj.weight)  # one parameter, in place
    with torch.inference_mode():
        moe_decode.moe_forward(moe, x)
    assert moe.__dict__["_kpop_experts"][0] != state
    with torch.no_grad():
        for mine, theirs in zip(moe.parameters(), new.parameters()):
            mine.copy_(theirs)
    with torch.inference_mode():
        torch.testing.assert_close(moe_decode.moe_forward(moe, x), new(x)[0], rtol=0, atol=1e-4)
