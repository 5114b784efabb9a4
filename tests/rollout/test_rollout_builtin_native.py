"""The native one-row decode kernels (kpop.rollout.builtin.native) against float64 references written
from their contracts, the hybrid's one-row decode through them against the model's full forward,
and the build: cached per source, reported (not raised) when no compiler exists."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kpop.rollout.builtin import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")


def _rms64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("shape", [(1, 1, 768), (64, 1, 96), (3, 5)])
def test_rms_norm_equals_the_formula_and_torchs_op(shape):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(shape, generator=gen) * 3, torch.randn(shape[-1], generator=gen)
    got = native.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(got.double(), _rms64(x, w, 1e-6), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, F.rms_norm(x, (shape[-1],), None, 1e-6) * w, rtol=1e-5, atol=1e-6)


def _lightning64(qkv, gate, state, decay, qn, kn, cos, sin, gn, groups, qk_eps, g_eps, scale):
    """The contract, head by head in float64: returns (out [H*d], new state [H, d, d])."""
    H, d = state.shape[0], state.shape[-1]
    q, k, v = qkv.double().view(3, H, d)
    if qn is not None:
        q, k = _rms64(q, qn, qk_eps), _rms64(k, kn, qk_eps)
    if cos is not None:
        half = cos.numel()
        c, s = cos.double(), sin.double()

        def rot(x):
            a, b = x[:, :half], x[:, half : 2 * half]
            return torch.cat([a * c - b * s, b * c + a * s, x[:, 2 * half :]], -1)

        q, k = rot(q), rot(k)
    new = decay.double().view(H, 1, 1) * state.double() + k[:, :, None] * v[:, None, :]
    o = torch.einsum("hi,hij->hj", q * scale, new).reshape(groups, -1)
    o = _rms64(o, torch.ones(o.shape[-1]), g_eps).reshape(-1) * gn.double()
    return o * torch.sigmoid(gate.double()), new


def _layer64(h, norm_w, w_qkvg, silu, state, decay, qn, kn, cos, sin, gn, groups, w_dense):
    """`lightning_layer_row`'s contract in float64: (h + W_dense o, new state)."""
    x = _rms64(h, norm_w, 1e-6)
    qkvg = w_qkvg.double() @ x
    hd = qkvg.numel() // 4
    qkv, gate = qkvg[: 3 * hd], qkvg[3 * hd :]
    if silu:
        qkv = F.silu(qkv)
    o, new = _lightning64(qkv, gate, state, decay, qn, kn, cos, sin, gn, groups, 1e-6, 1e-5, state.shape[-1] ** -0.5)
    return h.double() + w_dense.double() @ o, new


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("half", [0, 8])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("threads", [1, 2])
def test_lightning_layer_row_equals_the_formula(qk_norm, half, groups, silu, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the kernel's thread count, nothing else
    H, d, hidden = 3, 32, 56
    gen = torch.Generator().manual_seed(1)
    h, norm_w = torch.randn(hidden, generator=gen), torch.randn(hidden, generator=gen)
    w_qkvg, w_dense = torch.randn(4 * H * d, hidden, generator=gen) * 0.2, torch.randn(hidden, H * d, generator=gen) * 0.2
    state, decay = torch.randn(H, d, d, generator=gen), torch.rand(H, generator=gen)
    qn, kn = (torch.randn(d, generator=gen), torch.randn(d, generator=gen)) if qk_norm else (None, None)
    cos, sin = (torch.randn(half, generator=gen), torch.randn(half, generator=gen)) if half else (None, None)
    gn = torch.randn(H * d, generator=gen)
    want, want_state = _layer64(h, norm_w, w_qkvg, silu, state, decay, qn, kn, cos, sin, gn, groups, w_dense)
    got = native.lightning_layer_row(h, norm_w, 1e-6, w_qkvg, silu, state, decay, qn, kn, cos, sin, gn, groups, 1e-6, 1e-5,
                                     d**-0.5, w_dense)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.double(), want_state, rtol=1e-5, atol=1e-5)  # updated in place


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("qk_norm,half", [(True, 8), (False, 0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_lightning_rows_equals_the_formula_row_by_row(silu, qk_norm, half, threads, monkeypatch):
    """Each of 5 rows gets its own state, tables and output (a row reading another's would fail)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rows, H, d, groups = 5, 3, 32, 4
    gen = torch.Generator().manual_seed(2)
    qkvg, state, decay = torch.randn(rows, 1, 4 * H * d, generator=gen), torch.randn(rows, H, d, d, generator=gen), torch.rand(H, generator=gen)
    qn, kn = (torch.randn(d, generator=gen), torch.randn(d, generator=gen)) if qk_norm else (None, None)
    cos, sin = (torch.randn(rows, 1, half, generator=gen), torch.randn(rows, 1, half, generator=gen)) if half else (None, None)
    gn = torch.randn(H * d, generator=gen)
    wants = []
    for r in range(rows):
        qkv, gate = qkvg[r, 0, : 3 * H * d], qkvg[r, 0, 3 * H * d :]
        c, s = (cos[r, 0], sin[r, 0]) if half else (None, None)
        wants.append(_lightning64(F.silu(qkv) if silu else qkv, gate, state[r], decay, qn, kn, c, s, gn, groups, 1e-6,
                                  1e-5, d**-0.5))
    got = native.lightning_rows(qkvg, silu, state, decay, qn, kn, cos, sin, gn, groups, 1e-6, 1e-5, d**-0.5)
    torch.testing.assert_close(got.double(), torch.stack([o for o, _ in wants]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.double(), torch.stack([s for _, s in wants]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shapes"):  # 5 groups do not divide H d = 96
        native.lightning_rows(qkvg, silu, state, decay, qn, kn, cos, sin, gn, 5, 1e-6, 1e-5, 1.0)


def test_lightning_layer_row_rejects_shapes_that_do_not_match():
    h, state, w_dense = torch.zeros(16), torch.zeros(2, 8, 8), torch.zeros(16, 16)
    with pytest.raises(ValueError, match="shapes"):  # q|k|v|gate must be 4 H d = 64 rows
        native.lightning_layer_row(h, torch.ones(16), 1e-6, torch.zeros(60, 16), False, state, torch.ones(2), None, None,
                                   None, None, torch.ones(16), 1, 0.0, 1e-5, 1.0, w_dense)
    with pytest.raises(ValueError, match="shapes"):  # 3 groups do not divide H d = 16
        native.lightning_layer_row(h, torch.ones(16), 1e-6, torch.zeros(64, 16), False, state, torch.ones(2), None, None,
                                   None, None, torch.ones(16), 3, 0.0, 1e-5, 1.0, w_dense)


@pytest.mark.parametrize("mode", ["native", "torch", "biased-dense", "q-lora"])
def test_one_row_hybrid_decode_equals_full_forward_through_the_kernel(mode, monkeypatch, decode_one_row):
    """One row decoded for 12 steps (Lightning and MLA layers) equals the model's full forward over
    the row's context (1e-4) on each one-row path: the prepared plan (kpop.rollout.builtin.row_plan:
    every layer native, no wrapper called), torch's ops (kernels unavailable), and the per-layer
    native calls of a model the plan does not take: Lightning output projections with a bias keep
    those layers on torch's ops, MLA queries through a low-rank pair keep MLA's projections on
    torch and its attention on `mla_row`."""
    from kpop.rollout.builtin.adapters import HybridAdapter, adapter_for
    from kpop.rollout.builtin.tiny_models import tiny_hybrid

    calls = {"lightning_layer_row": [], "mla_layer_row": [], "mla_row": []}
    for name, seen in calls.items():
        kernel = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _k=kernel, _seen=seen: _seen.append(1) or _k(*a))
    planned, decode_row = [], HybridAdapter._decode_row
    monkeypatch.setattr(HybridAdapter, "_decode_row", lambda *a: planned.append(1) or decode_row(*a))
    if mode == "torch":
        monkeypatch.setattr(native, "available", lambda: False)
    model = tiny_hybrid(seed=0, **({"q_lora_rank": 12} if mode == "q-lora" else {}))
    lightning_layers = sum(not model.config.is_mla_layer(i) for i in range(model.config.num_hidden_layers))
    if mode == "biased-dense":
        for i, layer in enumerate(model.model.layers):
            if not model.config.is_mla_layer(i):
                dense = layer.attention.dense
                layer.attention.dense = torch.nn.Linear(dense.in_features, dense.out_features, bias=True)
    context = torch.randint(0, 320, (18,), generator=torch.Generator().manual_seed(4)).tolist()
    steps = 12
    decode_one_row(adapter_for(model), model, context, 6, steps)
    mla_layers = model.config.num_hidden_layers - lightning_layers
    per_step = {"lightning_layer_row": lightning_layers * (mode == "q-lora"),
                "mla_layer_row": mla_layers * (mode == "biased-dense"), "mla_row": mla_layers * (mode == "q-lora")}
    assert {name: len(seen) for name, seen in calls.items()} == {name: steps * n for name, n in per_step.items()}
    assert len(planned) == (steps if mode == "native" else 0)
    assert lightning_layers > 0 and mla_layers > 0


def test_the_build_is_cached_and_a_missing_compiler_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOP_CACHE_DIR", str(tmp_path))
    first = native.build()
    stamp = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == stamp  # no second compile
    assert first.parent == tmp_path / "native" and list(first.parent.iterdir()) == [first]
    with pytest.raises(RuntimeError, match="no C compiler 'kpop-no-such-cc'"):
        native.build("kpop-no-such-cc")
    with pytest.raises(RuntimeError, match="false failed on native_kernels.c"):  # a compiler that fails
        native.build("false")
    assert list(first.parent.iterdir()) == [first]  # the failed build left nothing behind


def test_without_the_kernels_rms_is_torchs_op(monkeypatch):
    from kpop.models.layers.norm import RMSNorm
    from kpop.rollout.builtin.norms import rms

    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 1, 64)
    calls = []
    kernel = native.rms_norm
    monkeypatch.setattr(native, "rms_norm", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    with torch.inference_mode():
        torch.testing.assert_close(rms(norm, x), norm(x), rtol=1e-5, atol=1e-6)
        assert calls == [1]
        with native.switched_off():
            assert not native.available()
            assert torch.equal(rms(norm, x), F.rms_norm(x, (64,), None, norm.eps) * norm.weight)
        assert calls == [1] and native.available()


@pytest.mark.parametrize("experts,k,n_group,topk_group", [(8, 2, 4, 2), (8, 3, None, None), (16, 4, 4, 2), (6, 1, None, None)])
def test_route_row_picks_what_the_gate_picks(experts, k, n_group, topk_group):
    from kpop.models.layers.moe import MoEGate

    torch.manual_seed(experts + k)
    gate = MoEGate(24, experts, k, n_group, topk_group, routed_scaling_factor=2.5).eval()
    with torch.no_grad():
        gate.expert_bias.normal_(0, 0.1)
    for _ in range(40):
        x = torch.randn(1, 24)
        assert native.routes(x, gate)
        ids, weights = native.route_row(x, gate)
        want_ids, want_weights, _ = gate(x)
        order = want_ids[0].argsort()
        assert sorted(ids) == want_ids[0][order].tolist()
        got = torch.tensor([w for _, w in sorted(zip(ids, weights))])
        torch.testing.assert_close(got, want_weights[0][order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("experts,k,n_group,topk_group", [(8, 2, 4, 2), (16, 4, 4, 2), (6, 1, None, None)])
def test_route_rows_pick_what_the_gate_picks_for_every_row(experts, k, n_group, topk_group, dtype, threads):
    """70 rows of 72 features (a full 64-value block and a tail), the gate in `dtype`: each row's
    experts and weights as the gate's own forward gives them (its logits in float32 from the
    upcast weights)."""
    from kpop.models.layers.moe import MoEGate

    torch.manual_seed(experts + k)
    gate = MoEGate(72, experts, k, n_group, topk_group, routed_scaling_factor=2.5).eval()
    with torch.no_grad():
        gate.expert_bias.normal_(0, 0.1)
    gate = gate.to(dtype)
    x = torch.randn(70, 72).to(dtype)
    assert native.routable(gate, dtype)
    ids, weights = native.route_rows(x, gate)
    want_ids, want_weights, _ = gate(x)
    got_order, want_order = ids.argsort(-1), want_ids.argsort(-1)
    assert torch.equal(ids.gather(1, got_order), want_ids.gather(1, want_order))
    torch.testing.assert_close(weights.gather(1, got_order), want_weights.gather(1, want_order), rtol=1e-5, atol=1e-6)


def test_route_row_refuses_gates_it_cannot_route():
    from kpop.models.layers.moe import MoEGate

    gate = MoEGate(24, 8, 2, 4, 2, routed_scaling_factor=1.0)
    x = torch.randn(1, 24)
    assert native.routes(x, gate)
    assert not native.routes(x.bfloat16(), gate)
    assert not native.routes(torch.randn(2, 24), gate)  # one row only
    assert not native.routes(x, MoEGate(24, 8, 5, 4, 1, routed_scaling_factor=1.0))  # 5 picks from 2 kept


def test_one_row_moe_routes_natively_and_equals_the_module(monkeypatch):
    from kpop.models.layers.moe import MoE
    from kpop.rollout.builtin.moe_decode import moe_forward

    calls = []
    kernel = native.route_row
    monkeypatch.setattr(native, "route_row", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    torch.manual_seed(0)
    moe = MoE(hidden_size=32, num_experts=8, top_k=2, moe_intermediate_size=24, num_shared_experts=1,
              n_group=4, topk_group=2, routed_scaling_factor=2.5).eval()
    with torch.inference_mode():
        for _ in range(5):
            x = torch.randn(1, 1, 32)
            torch.testing.assert_close(moe_forward(moe, x), moe(x)[0], rtol=0, atol=1e-5)
    assert len(calls) == 5


@pytest.mark.parametrize("T", [1, 37])
def test_mla_row_equals_the_absorbed_attention(T):
    heads, nope, rope, v, rank = 3, 16, 8, 12, 20
    gen = torch.Generator().manual_seed(T)
    q_nope, q_rope = torch.randn(heads, nope, generator=gen), torch.randn(heads, rope, generator=gen)
    latent, k_rope = torch.randn(T, rank, generator=gen), torch.randn(T, rope, generator=gen)
    kv_b = torch.randn(heads * (nope + v), rank, generator=gen) * 0.3
    w = kv_b.double().view(heads, nope + v, rank)
    q_lat = torch.einsum("hn,hnr->hr", q_nope.double(), w[:, :nope])
    scores = (q_lat @ latent.double().T + q_rope.double() @ k_rope.double().T) * 0.2
    want = torch.einsum("hr,hvr->hv", scores.softmax(-1) @ latent.double(), w[:, nope:])
    got = native.mla_row(q_nope, q_rope, latent, k_rope, kv_b, 0.2)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        native.mla_row(q_nope, q_rope, latent, k_rope[:, :4], kv_b, 0.2)
