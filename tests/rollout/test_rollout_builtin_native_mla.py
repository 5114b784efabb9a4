"""`native.mla_layer_row` (an MLA layer's one-row attention block, projections and the cache write
included) against a float64 reference written from its contract, on one and two threads."""

from __future__ import annotations

import pytest
import torch

from kpop.rollout.builtin import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")


def _rms64(x, w, eps):
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def _pairs64(x, cos, sin):
    """Pairs (2i, 2i+1) rotated: kpop.models.layers.rope.apply_interleaved."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)


def _mla_layer64(h, norm_w, w_qkva, kv_norm_w, cos, sin, latent, k_rope, length, kv_b, scaling, w_dense, H, nope, rope, v):
    rank = latent.shape[1]
    x = _rms64(h, norm_w, 1e-6)
    qkva = w_qkva.double() @ x
    q, c, kr = qkva.split([H * (nope + rope), rank, rope])
    latent, k_rope = latent.double().clone(), k_rope.double().clone()
    c64, s64 = cos.double(), sin.double()
    latent[length], k_rope[length] = _rms64(c, kv_norm_w, 1e-5), _pairs64(kr, c64, s64)
    q = q.view(H, nope + rope)
    q_nope, q_rope = q[:, :nope], _pairs64(q[:, nope:], c64, s64)
    w = kv_b.double().view(H, nope + v, rank)
    T = length + 1
    q_lat = torch.einsum("hn,hnr->hr", q_nope, w[:, :nope])
    scores = (q_lat @ latent[:T].T + q_rope @ k_rope[:T].T) * scaling
    o = torch.einsum("hr,hvr->hv", scores.softmax(-1) @ latent[:T], w[:, nope:])
    return h.double() + w_dense.double() @ o.reshape(-1), latent, k_rope


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("length", [0, 13])
def test_mla_layer_row_equals_the_formula(length, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the kernel's thread count, nothing else
    H, nope, rope, v, rank, hidden, cap = 3, 16, 8, 12, 20, 40, 16
    gen = torch.Generator().manual_seed(length)
    h, norm_w, kv_norm_w = torch.randn(hidden, generator=gen), torch.randn(hidden, generator=gen), torch.randn(rank, generator=gen)
    w_qkva = torch.randn(H * (nope + rope) + rank + rope, hidden, generator=gen) * 0.2
    kv_b, w_dense = torch.randn(H * (nope + v), rank, generator=gen) * 0.3, torch.randn(hidden, H * v, generator=gen) * 0.2
    angles = torch.rand(rope // 2, generator=gen) * 6
    cos, sin = angles.cos(), angles.sin()
    latent, k_rope = torch.randn(cap, rank, generator=gen), torch.randn(cap, rope, generator=gen)
    want, want_latent, want_k_rope = _mla_layer64(h, norm_w, w_qkva, kv_norm_w, cos, sin, latent, k_rope, length, kv_b,
                                                  0.3, w_dense, H, nope, rope, v)
    got = native.mla_layer_row(h, norm_w, 1e-6, w_qkva, kv_norm_w, 1e-5, cos, sin, latent, k_rope, length, kv_b, 0.3,
                               w_dense, H, nope, rope, v)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    # the new column written at `length`, every other column untouched
    torch.testing.assert_close(latent.double(), want_latent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_rope.double(), want_k_rope, rtol=1e-5, atol=1e-5)


def test_mla_layer_row_rejects_shapes_that_do_not_match():
    H, nope, rope, v, rank, hidden, cap = 2, 4, 4, 4, 6, 8, 5
    args = [torch.zeros(hidden), torch.ones(hidden), 1e-6, torch.zeros(H * (nope + rope) + rank + rope, hidden),
            torch.ones(rank), 1e-5, torch.ones(rope // 2), torch.zeros(rope // 2), torch.zeros(cap, rank),
            torch.zeros(cap, rope), 2, torch.zeros(H * (nope + v), rank), 1.0, torch.zeros(hidden, H * v), H, nope, rope, v]
    native.mla_layer_row(*args)
    for index, bad in [(3, torch.zeros(5, hidden)), (10, cap), (11, torch.zeros(3, rank)), (9, torch.zeros(cap, 2))]:
        with pytest.raises(ValueError, match="shapes"):
            native.mla_layer_row(*args[:index], bad, *args[index + 1 :])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mla_attend_rows_equals_the_formula_over_each_rows_columns(dtype, threads):
    """Several rows of ragged lengths: row b attends over columns 0..lengths[b] only (the cache holds
    NaN past them), all heads from one read of each column."""
    gen = torch.Generator().manual_seed(3)
    H, B, r, rope, cap = 3, 4, 40, 8, 16  # r not a multiple of the SIMD width: the tails run
    lengths = torch.tensor([0, 5, 14, 9])
    latent, k_rope = torch.randn(B, cap, r, generator=gen).to(dtype), torch.randn(B, cap, rope, generator=gen).to(dtype)
    for b, n in enumerate(lengths.tolist()):
        latent[b, n + 1 :], k_rope[b, n + 1 :] = float("nan"), float("nan")
    q_lat, q_rope = torch.randn(H, B, r, generator=gen), torch.randn(B, H, rope, generator=gen)
    got = native.mla_attend_rows(q_lat, q_rope, latent, k_rope, lengths, 0.3, 15)
    for b, n in enumerate(lengths.tolist()):
        lat, kr = latent[b, : n + 1].double(), k_rope[b, : n + 1].double()
        for h in range(H):
            p = torch.softmax(0.3 * (lat @ q_lat[h, b].double() + kr @ q_rope[b, h].double()), 0)
            torch.testing.assert_close(got[h, b].double(), p @ lat, rtol=1e-5, atol=1e-5)


def test_mla_attend_rows_rejects_mismatched_shapes():
    q_lat, q_rope = torch.zeros(2, 3, 8), torch.zeros(3, 2, 4)
    latent, k_rope, lengths = torch.zeros(3, 6, 8), torch.zeros(3, 6, 4), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError):
        native.mla_attend_rows(q_lat, q_rope[:, :1], latent, k_rope, lengths, 1.0, 4)
    with pytest.raises(ValueError):
        native.mla_attend_rows(q_lat, q_rope, latent, k_rope, lengths, 1.0, 7)  # more columns than the cache
    with pytest.raises(ValueError):
        native.mla_attend_rows(q_lat, q_rope, latent, k_rope.bfloat16(), lengths, 1.0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mla_prep_rows_writes_each_rows_column_and_rotates_the_queries(dtype, threads):
    """Several rows at their own positions: column lengths[b] of row b's cache gets RMSNorm(c) and
    k_rope rotated in pairs; every other column is left as it was; q_nope per head [H, B, nope],
    q_rope rotated [B, H, rope], against float64 formulas."""
    gen = torch.Generator().manual_seed(4)
    B, H, nope, rope, r, cap = 3, 2, 6, 4, 10, 8
    D = H * (nope + rope) + r + rope
    qkv = torch.randn(B, D + 5, generator=gen).to(dtype)[:, :D]  # strided rows, as a slice of a wider product
    w = (torch.rand(r, generator=gen) + 0.5).to(dtype)
    lengths = torch.tensor([0, 4, 7])
    angles = lengths[:, None].double() * torch.tensor([1.0, 0.1], dtype=torch.float64)
    cos, sin = angles.cos().float(), angles.sin().float()
    latent, k_rope = torch.randn(B, cap, r, generator=gen).to(dtype), torch.randn(B, cap, rope, generator=gen).to(dtype)
    before_latent, before_k = latent.clone(), k_rope.clone()
    q_nope, q_rope = native.mla_prep_rows(qkv, H, nope, rope, w, 1e-6, cos, sin, latent, k_rope, lengths)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    x = qkv.double()
    heads = x[:, : H * (nope + rope)].view(B, H, nope + rope)
    c, kr = x[:, H * (nope + rope) : -rope], x[:, -rope:]
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(latent[b, n].double(), _rms64(c[b], w, 1e-6), **tol)
        torch.testing.assert_close(k_rope[b, n].double(), _pairs64(kr[b], cos[b].double(), sin[b].double()), **tol)
        others = [t for t in range(cap) if t != n]
        assert torch.equal(latent[b, others], before_latent[b, others]) and torch.equal(k_rope[b, others], before_k[b, others])
        for h in range(H):
            assert torch.equal(q_nope[h, b], heads[b, h, :nope].float())
            torch.testing.assert_close(q_rope[b, h].double(), _pairs64(heads[b, h, nope:], cos[b].double(), sin[b].double()), **tol)
