"""Lightning Attention: chunked, recurrent and naive forms agree (outputs, final state, gradients);
the CPU implementation matches fla's own PyTorch references; decay slopes follow the spec."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from kpop.models.ops.decay import alibi_slopes, depth_scale, lightning_log_decay
from kpop.models.ops.lightning import lightning_attention
from kpop.models.ops.lightning_chunked import chunked_lightning_attention
from kpop.models.ops.lightning_naive import naive_lightning_attention
from kpop.models.ops.lightning_recurrent import recurrent_lightning_attention

TOL = 1e-9  # float64 end to end


def _inputs(B=2, T=37, H=4, K=8, V=6, with_state=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = lightning_log_decay(H, 1, 4).double()
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) if with_state else None
    return q, k, v, g, s0


@pytest.mark.parametrize("T", [1, 7, 37, 64, 101])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_recurrent_naive_outputs_agree(T, chunk_size, with_state):
    q, k, v, g, s0 = _inputs(T=T, with_state=with_state)
    o_n, s_n = naive_lightning_attention(q, k, v, g, initial_state=s0, output_final_state=True)
    o_c, s_c = chunked_lightning_attention(q, k, v, g, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    o_r, s_r = recurrent_lightning_attention(q, k, v, g, initial_state=s0, output_final_state=True)
    for o, s in ((o_c, s_c), (o_r, s_r)):
        assert (o.double() - o_n.double()).abs().max() < TOL
        assert (s.double() - s_n.double()).abs().max() < TOL


@pytest.mark.parametrize("chunk_size", [4, 16])
@pytest.mark.parametrize("with_state", [False, True])
def test_gradients_agree(chunk_size, with_state):
    q, k, v, g, s0 = _inputs(T=29, with_state=with_state)
    leaves = [q, k, v] + ([s0] if with_state else [])
    grads = {}
    for name, fn in {"naive": naive_lightning_attention, "recurrent": recurrent_lightning_attention,
                     "chunk": lambda *a, **kw: chunked_lightning_attention(*a, **kw, chunk_size=chunk_size)}.items():
        xs = [x.detach().clone().requires_grad_(True) for x in leaves]
        state = xs[3] if with_state else None
        o, s = fn(xs[0], xs[1], xs[2], g, initial_state=state, output_final_state=True)
        (o.pow(2).sum() + s.sin().sum()).backward()
        grads[name] = [x.grad for x in xs]
    for name in ("recurrent", "chunk"):
        for a, b in zip(grads[name], grads["naive"]):
            assert (a - b).abs().max() < 1e-8


def _fla_naive_module():
    """fla's pure-PyTorch simple_gla references, loaded from their file: importing the `fla` package
    itself initialises Triton for ~30 s, and naive.py needs only torch and einops."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "simple_gla" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("fla_simple_gla_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_matches_fla_naive_references():
    naive = _fla_naive_module()
    q, k, v, g, s0 = _inputs(T=45, with_state=True)
    q, k, v, s0 = (x.float() for x in (q, k, v, s0))
    g_full = g.float()[None, None, :].expand(q.shape[0], q.shape[1], -1).contiguous()
    o_ref, s_ref = naive.naive_recurrent_simple_gla(q, k, v, g_full, initial_state=s0.clone(), output_final_state=True)
    o_chunk_ref, _ = naive.naive_chunk_simple_gla(q, k, v, g_full, initial_state=s0.clone(), output_final_state=True, chunk_size=16)
    for fn in (chunked_lightning_attention, recurrent_lightning_attention):
        o, s = fn(q, k, v, g.float(), initial_state=s0, output_final_state=True)
        assert (o - o_ref).abs().max() < 1e-4
        assert (o - o_chunk_ref).abs().max() < 1e-4
        assert (s - s_ref).abs().max() < 1e-4


def test_dispatch_on_cpu_uses_torch_and_logs_once(caplog):
    q, k, v, g, _ = _inputs(T=9)
    with caplog.at_level("INFO", logger="kpop.models.ops.lightning"):
        for _ in range(3):
            o, _ = lightning_attention(q, k, v, g, mode="chunk", backend="auto")
    ref, _ = naive_lightning_attention(q, k, v, g)
    assert (o - ref).abs().max() < TOL
    assert sum("Lightning Attention:" in r.message for r in caplog.records) <= 1
    with pytest.raises(RuntimeError):
        lightning_attention(q, k, v, g, backend="fla")


def test_alibi_slopes_and_depth_scaling():
    assert alibi_slopes(8) == pytest.approx([2 ** (-(h + 1)) for h in range(8)])
    assert alibi_slopes(4) == pytest.approx([2 ** (-2 * (h + 1)) for h in range(4)])
    assert alibi_slopes(6)[:4] == pytest.approx(alibi_slopes(4))
    assert alibi_slopes(6)[4:] == pytest.approx(alibi_slopes(8)[0::2][:2])
    # vLLM form (offset 0) and HF form (offset 1), L = 20 layers
    assert depth_scale(0, 20, 0) == pytest.approx(1 + 1e-5)
    assert depth_scale(0, 20, 1) == pytest.approx(1 + 1 / 19 + 1e-5)
    assert depth_scale(19, 20, 0) == pytest.approx(1e-5)
    g = lightning_log_decay(4, 5, 11, offset=0)
    assert torch.allclose(g, -torch.tensor(alibi_slopes(4)) * (1 - 5 / 10 + 1e-5))
    assert (g < 0).all() and math.isclose(depth_scale(3, 1), 1 + 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_fla_kernels_match_cpu_path(mode):
    q, k, v, g, s0 = (x.float() if x is not None else None for x in _inputs(T=130, K=64, V=64, with_state=True))
    o_cpu, s_cpu = lightning_attention(q, k, v, g, initial_state=s0, output_final_state=True, mode=mode, backend="torch")
    dev = [x.cuda() for x in (q, k, v, g, s0)]
    o_gpu, s_gpu = lightning_attention(*dev[:4], initial_state=dev[4], output_final_state=True, mode=mode, backend="fla")
    assert (o_gpu.float().cpu() - o_cpu).abs().max() < 2e-3
    assert (s_gpu.float().cpu() - s_cpu).abs().max() < 2e-3


@pytest.mark.gpu
def test_fla_chunk_gradients_match_cpu_path():
    q, k, v, g, _ = (x.float() if x is not None else None for x in _inputs(T=96, K=64, V=64))
    grads = []
    for backend, device in (("torch", "cpu"), ("fla", "cuda")):
        xs = [x.to(device).requires_grad_(True) for x in (q, k, v)]
        o, _ = lightning_attention(*xs, g.to(device), mode="chunk", backend=backend)
        o.pow(2).sum().backward()
        grads.append([x.grad.cpu() for x in xs])
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 5e-3


@pytest.mark.parametrize("T", [5, 37])
def test_chunked_without_state_equals_zero_state(T):
    """The first chunk's skipped past (no initial state) gives what a zero state gives, bit for bit."""
    q, k, v, g, _ = (x.float() if x is not None else None for x in _inputs(T=T))
    zeros = torch.zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    o0, s0 = chunked_lightning_attention(q, k, v, g, initial_state=zeros, output_final_state=True, chunk_size=16)
    o1, s1 = chunked_lightning_attention(q, k, v, g, output_final_state=True, chunk_size=16)
    assert torch.equal(o0, o1) and torch.equal(s0, s1)
