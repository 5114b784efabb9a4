"""`native.kv_attend` (one new token per row over a key/value cache) and `native.swiglu` against references
written from its contract, on one and two of torch's threads, and the library's OpenMP: torch's
own libgomp, never a second runtime."""

from __future__ import annotations

import pytest
import torch

from kpop.rollout.builtin import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")


def _attend64(qkv, heads, kv_heads, cos, sin, keys, values, lengths, scale):
    """The contract in float64, row by row and head by head: (out [B, H*d], keys, values after)."""
    B, _, _, d = keys.shape
    keys, values = keys.double().clone(), values.double().clone()
    q, k, v = qkv.double().split([heads * d, kv_heads * d, kv_heads * d], -1)
    q, k, v = q.view(B, heads, d), k.view(B, kv_heads, d), v.view(B, kv_heads, d)
    c, s = cos.double()[:, None], sin.double()[:, None]

    def rotate(x):
        return x * c + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * s

    q, k = rotate(q), rotate(k)
    out = torch.empty(B, heads, d, dtype=torch.float64)
    for b in range(B):
        n = int(lengths[b])
        keys[b, :, n], values[b, :, n] = k[b], v[b]
        for h in range(heads):
            g = h // (heads // kv_heads)
            p = torch.softmax(scale * keys[b, g, : n + 1] @ q[b, h], 0)
            out[b, h] = p @ values[b, g, : n + 1]
    return out.view(B, -1), keys, values


@pytest.mark.parametrize("B,heads,kv_heads,d,cap", [
    (1, 4, 4, 16, 9), (5, 8, 2, 32, 17), (16, 6, 3, 8, 40),  # the general loops, register blocks at d = 32
    (3, 4, 4, 64, 21), (3, 4, 2, 64, 21), (2, 2, 1, 128, 11),  # float32 blocks only with a key head shared
])
def test_kv_attend_equals_the_formula(B, heads, kv_heads, d, cap, threads):
    gen = torch.Generator().manual_seed(B)
    qkv = torch.randn(B, (heads + 2 * kv_heads) * d, generator=gen)
    cos, sin = torch.randn(B, d, generator=gen), torch.randn(B, d, generator=gen)
    keys, values = torch.randn(B, kv_heads, cap, d, generator=gen), torch.randn(B, kv_heads, cap, d, generator=gen)
    lengths = torch.randint(0, cap - 1, (B,), generator=gen)
    lengths[0] = cap - 2  # the widest row: columns = cap - 1
    want, want_keys, want_values = _attend64(qkv, heads, kv_heads, cos, sin, keys, values, lengths, 0.3)
    got = native.kv_attend(qkv, heads, kv_heads, cos, sin, keys, values, lengths, 0.3, int(lengths.max()) + 1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # the new column written at each row's length, every other column untouched
    torch.testing.assert_close(keys.double(), want_keys, rtol=1e-6, atol=1e-6)
    assert torch.equal(values.double(), want_values)


@pytest.mark.parametrize("heads,kv_heads,d,dtype", [(2, 2, 8, torch.float32), (4, 2, 32, torch.float32),
                                                  (2, 2, 64, torch.bfloat16)])
def test_kv_attend_reads_no_column_past_a_rows_length(heads, kv_heads, d, dtype):
    gen = torch.Generator().manual_seed(7)
    B, cap = 3, 12
    qkv = torch.randn(B, (heads + 2 * kv_heads) * d, generator=gen).to(dtype)
    cos, sin = torch.randn(B, d, generator=gen), torch.randn(B, d, generator=gen)
    keys, values = (torch.randn(B, kv_heads, cap, d, generator=gen).to(dtype) for _ in range(2))
    lengths = torch.tensor([2, 9, 5])
    clean = native.kv_attend(qkv, heads, kv_heads, cos, sin, keys.clone(), values.clone(), lengths, 0.5, 10)
    for b, n in enumerate(lengths.tolist()):
        keys[b, :, n + 1 :], values[b, :, n + 1 :] = 1e4, 1e4
    assert torch.equal(native.kv_attend(qkv, heads, kv_heads, cos, sin, keys, values, lengths, 0.5, 10), clean)


def test_kv_attend_rejects_what_it_cannot_take():
    keys = torch.zeros(2, 2, 8, 4)
    qkv, cos, lengths = torch.zeros(2, 6 * 4), torch.zeros(2, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="shapes"):
        native.kv_attend(qkv, 3, 2, cos, cos, keys, keys.clone(), lengths, 1.0, 3)  # 3 heads over 2 groups
    with pytest.raises(ValueError, match="shapes"):
        native.kv_attend(qkv, 2, 2, cos, cos, keys, keys.clone(), lengths, 1.0, 9)  # past the capacity
    with pytest.raises(ValueError, match="int64"):
        native.kv_attend(qkv, 2, 2, cos, cos, keys, keys.clone(), lengths.int(), 1.0, 3)


_LOAD_AND_LIST = """
import torch
from pathlib import Path
def gomp():
    return sorted({l.split()[-1] for l in Path('/proc/self/maps').read_text().splitlines() if 'libgomp' in l})
before = gomp()
from kpop.rollout.builtin import native
native.kv_attend(torch.zeros(1, 24), 1, 1, torch.ones(1, 8), torch.zeros(1, 8), torch.zeros(1, 1, 4, 8),
                 torch.zeros(1, 1, 4, 8), torch.tensor([0]), 1.0, 1)
maps = Path('/proc/self/maps').read_text()
print(before == gomp(), str(native.build(openmp=True)) in maps, native.torch_on_libgomp())
"""


def test_an_openmp_build_shares_torchs_libgomp():
    """Where torch runs on libgomp, loading the library (built with OpenMP) maps no libgomp that
    torch had not already loaded: the kernel's threads are torch's own pool."""
    import subprocess
    import sys

    if not native.torch_on_libgomp():
        pytest.skip("torch here does not run on GNU OpenMP")
    assert "-fopenmp" in native.flags(True) and "-fopenmp" not in native.flags(False)
    done = subprocess.run([sys.executable, "-c", _LOAD_AND_LIST], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr


@pytest.mark.parametrize("shape", [(1, 1, 768), (5, 1, 96), (64, 34)])
def test_swiglu_equals_silu_of_the_gate_times_the_up_half(shape, threads):
    gate_up = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 4
    gate, up = gate_up.double().chunk(2, -1)
    torch.testing.assert_close(native.swiglu(gate_up).double(), gate * torch.sigmoid(gate) * up, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="halves"):
        native.swiglu(torch.zeros(2, 5))


def test_swiglu_is_accurate_over_the_whole_exponent_range():
    """The kernels' exponential (a polynomial over a range reduction, not libm's) across every
    binary exponent SiLU meets: relative error within a few float32 ulps, no overflow or NaN;
    past the ends e^x is exactly 0 or +inf, so SiLU of a very negative gate is exactly 0, never a
    subnormal (subnormal arithmetic is ~100x slower), and NaN stays NaN."""
    gate = torch.linspace(-87, 87, 400_001)
    got = native.swiglu(torch.cat([gate, torch.ones_like(gate)])[None]).double()[0]
    want = gate.double() * torch.sigmoid(gate.double())
    assert torch.isfinite(got).all()
    assert ((got - want).abs() / want.abs().clamp_min(1e-30)).max() < 5e-7
    far = torch.tensor([-1e4, -200.0, -100.0, -88.5, 88.5, 100.0, float("-inf"), float("nan")])
    out = native.swiglu(torch.cat([far, torch.ones_like(far)])[None])[0]
    assert torch.equal(out[:4], torch.zeros(4)) and torch.equal(out[4:6], far[4:6]) and out[7].isnan()
    assert out[6] == 0 or out[6].isnan()  # -inf / (1 + inf): torch's silu gives NaN here too


def test_gated_mlps_middle_is_native_for_silu_only(monkeypatch):
    from transformers.activations import SiLUActivation

    from kpop.rollout.builtin.gated_mlp import swiglu

    calls, kernel = [], native.swiglu
    monkeypatch.setattr(native, "swiglu", lambda *a: calls.append(1) or kernel(*a))
    gate_up = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    gate, up = gate_up.chunk(2, -1)
    for act in (torch.nn.functional.silu, torch.nn.SiLU(), SiLUActivation()):
        torch.testing.assert_close(swiglu(gate_up, act), torch.nn.functional.silu(gate) * up)
    assert len(calls) == 3
    assert torch.equal(swiglu(gate_up, torch.nn.GELU()), torch.nn.functional.gelu(gate) * up)
    assert torch.equal(swiglu(gate_up.double()), torch.nn.functional.silu(gate.double()) * up.double())
    assert len(calls) == 3  # GELU and float64 stay on torch's ops
