"""Decode kernels in C (native_kernels.c), compiled on first use by the machine's C compiler.

Why: at one row a decode step's products already read the weights at the rate `sum()` reads them
(medium hybrid: 6.0 ms of an 11.5-12 ms step), and the rest is ~1,300 eager torch ops at a few
microseconds each (`F.rms_norm` alone takes ~10 us on a 768-vector). These kernels do that work in
one call each: RMSNorm; a Lightning layer's whole one-row attention block, its projections
included (the state's update and readout in one pass over the state instead of three); MLA's
absorbed attention; the MoE router's pick and a one-row MoE layer's experts, products included;
SwiGLU's middle; and, at any row count, a standard-attention layer's step between its
projections (RoPE, the cache write, attention over each row's own length: ~15 ops, among them two
`index_put` and SDPA or two `bmm` over a padded span). A kernel runs no torch op; it is called
through ctypes on the tensors' memory. Products inside a kernel are rows of dot products with
four accumulators, one thread's rows one sequential read: over cold weights as fast as torch's
blocked `bmm` (0.92-1.07x), over cache-hot ones ~2x.

Contracts (CPU, contiguous tensors; `fits` says whether tensors qualify). float32, except that the
kernels of native_kernels_typed.h (`rms_norm`, `swiglu`, `kv_attend`, `lightning_rows`,
`route_rows`, `ffn_row`, `lightning_layer_row`, `mla_layer_row` and the plans' one-row layer
kernels, `typed(name, dtype)`) take float32 or bfloat16 (`DTYPES`) for the model's own memory:
weights, norm weights, the key/value and MLA caches, the residual row; Lightning states, decays
and RoPE tables stay float32. Arithmetic is float32 either way (bf16 widened on load, rounded to
nearest even where stored), so a bf16 kernel's result is the float32 kernel's on the same values,
rounded where it is stored (tests/rollout/test_rollout_builtin_native_bf16.py).
- `rms_norm(x [..., n], weight [n], eps)` = `F.rms_norm(x, (n,), None, eps) * weight` (the
  normalised value rounded to x's dtype before the product, as there), rows over the threads.
- `lightning_layer_row(h [hidden], norm_w, norm_eps, w_qkvg [4 H d, hidden], silu_qkv, state [H, d,
  d], decay [H], q_norm, k_norm ([d] or None), cos, sin ([half]; half may be 0), g_norm [H d],
  groups, qk_eps, g_eps, scale, w_dense [hidden, H d])` -> h + W_dense out: x = RMSNorm(h) (norm_w,
  norm_eps); q|k|v|gate = W_qkvg x, SiLU on q|k|v when silu_qkv; per head, q and k RMS-normed (if
  q_norm is given) and rotated on their first 2 * half dims (rotate-half layout), S_h <- decay_h
  S_h + k_h^T v_h in place, o_h = (scale q_h) S_h; out = group RMSNorm(o) (groups of H d / groups,
  weight g_norm) * sigmoid(gate). `HybridAdapter`'s Lightning block for one row.
- `lightning_rows(qkvg [B, .., 4 H d], silu_qkv, state [B, H, d, d], decay [H], q_norm, k_norm, cos, sin
  ([B, .., half] or None), g_norm, groups, qk_eps, g_eps, scale)` -> out [B, H d]: the same block
  between its two projections for each of B rows (q|k|v|gate is the first projection's output,
  SiLU'd in place when silu_qkv; each row's state updated in place). `HybridAdapter`'s Lightning
  attention for several rows.
- `mla_row(q_nope [H, nope], q_rope [H, rope], latent [T, r], k_rope [T, rope], kv_b [H * (nope +
  v), r], scaling)` -> out [H, v]: `MultiLatentAttention._absorbed` for one query over all T
  columns (q_lat = q_nope W_uk, softmax(scaling (q_lat latent^T + q_rope k_rope^T)) latent W_uv^T).
- `mla_layer_row(h [hidden], norm_w, norm_eps, w_qkva [H (nope + rope) + r + rope, hidden], kv_norm_w
  [r], kv_eps, cos, sin [rope / 2], latent [cap, r], k_rope [cap, rope], length, kv_b, scaling,
  w_dense [hidden, H v], heads, nope, rope, v)` -> h + W_dense out: x = RMSNorm(h); q | c | kr =
  W_qkva x; column `length` of the row's cache gets RMSNorm(c) (kv_norm_w, kv_eps) and kr rotated
  (pairs (2i, 2i+1), kpop.models.layers.rope.apply_interleaved); out = `mla_row` of q's heads
  (their rope parts rotated the same way) over columns 0..length. `HybridAdapter`'s MLA block
  for one row whose queries come from one projection (no q low-rank pair).
- `route_row(x [h], gate)` -> (expert ids, weights) as Python lists, for `MoEGate` (kpop.models.
  layers.moe) over one row: what `gate(x)` returns for it (ids in pick order, ties to the lower id);
  `route_rows(x [N, h], gate)` the same for N rows as tensors (float32 or bfloat16).
  `routes(x, gate)` says whether the gate qualifies (float32 weights, k reachable in the kept groups;
  `routable(gate, dtype)` the same for the one-row layer kernels of either dtype).
- `ffn_row(x [h], gate_up [E, 2I, h] | None, down [E, h, I] | None, ids, weights, dense_gate_up
  [2D, h] | None, dense_down [h, D] | None)` -> [h]: one row through a sum of SwiGLU feed-forwards,
  sum_j weights[j] FFN_{ids[j]}(x) over the given experts in increasing id, plus the dense one
  (a MoE's shared expert), FFN(x) = down(silu(gate x) * up x).
- `moe_dispatch(x, idx, experts)` and `moe_combine(blocks, counts, idx, pos, weights, shared,
  residual)`: a MoE layer's several rows before and after its experts (the sort by expert and
  gather; the weighted sum in index_add's order plus the shared expert and the residual), bit
  for bit the torch ops' values (kpop.rollout.builtin.moe_decode).
- `mla_prep_rows(qkv, heads, nope, rope, kv_norm_w, kv_eps, cos, sin, latent, k_rope, lengths)`
  and `mla_attend_rows(q_lat, q_rope, latent, k_rope, lengths, scaling, columns)`: an MLA layer's
  several rows between its products (the cache writes and RoPE; the absorbed attention between
  the two head products, each row over its own length).
- `swiglu(gate_up [..., 2n])` -> [..., n]: `F.silu(gate) * up` for gate, up = the two halves.
- `kv_attend(qkv, heads, kv_heads, cos, sin, keys, values, lengths, scale, columns)`: see its
  docstring; `KVAdapter`'s attention for one new token per row.
`lightning_layer_row`, `lightning_rows`, `mla_layer_row`, `ffn_row`, `swiglu`, `kv_attend`, `moe_combine`,
`mla_prep_rows` and `mla_attend_rows` spread their work over torch's threads where the library is built with OpenMP (below).
Values equal the torch ops' to float32 rounding (sums run in another order; exponentials are a
polynomial within 2 ulp of e^x, vectorised, where libm's `expf` is one call per element), not bit
for bit.

Build: `$CC` (default `cc`) with `flags()` into `~/.cache/kpop/native/` (`KPOP_CACHE_DIR` moves
it), one file per hash of the sources (native_kernels.c and the header it includes), the flags,
the compiler's version and the CPU's flags, written under a temporary name and renamed, so
processes starting together (Ray actors) never load a half-written library. OpenMP: `-fopenmp` only where torch itself runs on GNU OpenMP and its
libgomp is already loaded in this process: the library then links the same `libgomp.so.1` (the
loader reuses a loaded soname), so those kernels run on torch's own thread pool and nothing else
spins beside it; elsewhere `-fopenmp-simd` (SIMD pragmas only) and they run serially. No
compiler, or a failed build: `available()` is False, one warning is logged, and callers keep their
torch path. `switched_off()` makes callers take it on purpose (benchmarks/native_kernels.py measures both side by side).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_kernels.c")
TYPED_SOURCE = SOURCE.with_name("native_kernels_typed.h")  # included by SOURCE
BASE_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
MAX_HEAD_DIM = 1024  # KPOP_MAX_HEAD_DIM in the source
MAX_EXPERTS = 1024  # KPOP_MAX_EXPERTS

_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SUFFIX = {torch.float32: "_f32", torch.bfloat16: "_bf16"}  # the storage types of native_kernels_typed.h
DTYPES = tuple(_SUFFIX)


def cache_dir() -> Path:
    return Path(os.environ.get("KPOP_CACHE_DIR") or Path.home() / ".cache" / "kpop") / "native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def torch_on_libgomp() -> bool:
    """torch's parallel backend is OpenMP and a `libgomp.so.1` is mapped into this process: the
    soname an `-fopenmp` build asks for (wheels that bundle their own renamed copy, as
    sentencepiece's `libgomp-<hash>.so`, do not count: the loader would not reuse those)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    return any(Path(line.split()[-1]).name.startswith("libgomp.so.1") for line in maps if "/" in line)


def flags(openmp: bool) -> list[str]:
    return [*BASE_FLAGS, "-fopenmp" if openmp else "-fopenmp-simd"]


def build(compiler: str | None = None, openmp: bool = False) -> Path:
    """The compiled library's path, compiling it unless an identical build is cached. Raises
    `RuntimeError` (with the compiler's output) when no compiler is found or the build fails."""
    cc = compiler or os.environ.get("CC", "cc")
    exe = shutil.which(cc)
    if exe is None:
        raise RuntimeError(f"no C compiler {cc!r} on PATH")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    options = flags(openmp)
    key = hashlib.sha256("\0".join([SOURCE.read_text(), TYPED_SOURCE.read_text(), *options, version, platform.machine(), _cpu_flags()]).encode())
    target = cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    start = time.perf_counter()
    done = subprocess.run([exe, *options, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
    if done.returncode:
        os.unlink(tmp)
        raise RuntimeError(f"{cc} failed on {SOURCE.name}:\n{done.stderr.strip()}")
    os.replace(tmp, target)
    log.info("built the native decode kernels in %.1f s: %s", time.perf_counter() - start, target)
    return target


@cache
def _library() -> ctypes.CDLL | None:
    lib = None
    for openmp in (True, False) if torch_on_libgomp() else (False,):
        try:
            lib = ctypes.CDLL(str(build(openmp=openmp)))
            break
        except (RuntimeError, OSError) as exc:
            log.warning("native decode kernels%s unavailable: %s", " with OpenMP" if openmp else "", exc)
    if lib is None:
        log.warning("the torch ops stand in for the native decode kernels")
        return None
    signatures = {
        "kpop_mla_row": [_P] * 7 + [_I64] * 6 + [_F32],
        "kpop_route_row": [_P] * 3 + [_I64] * 5 + [_F32] + [_P] * 2,
    }
    typed_signatures = {
        "kpop_swiglu": [_P, _P, _I64, _I64, _I64],
        "kpop_rms_norm": [_P, _P, _P, _I64, _I64, _F32, _I64],
        "kpop_kv_attend": [_P, _I64] + [_P] * 7 + [_I64] * 6 + [_F32, _I64],
        "kpop_lightning_rows": [_P, _I64] + [_P] * 9 + [_I64] * 5 + [_F32] * 3 + [_I64],
        "kpop_ffn_row": [_P] * 5 + [_I64] * 2 + [_P] * 2 + [_I64] * 2 + [_P] * 2 + [_I64],
        "kpop_lightning_layer_row": [_P, _P, _F32, _P, _I64] + [_P] * 7 + [_I64] * 4 + [_F32] * 3 + [_P, _I64, _P, _P, _I64],
        "kpop_mla_layer_row": [_P, _P, _F32, _P, _P, _F32] + [_P] * 4 + [_I64, _P, _F32, _P] + [_I64] * 6 + [_P, _P, _I64],
        "kpop_moe_layer_row": [_P, _P, _F32, _P, _P] + [_I64] * 4 + [_F32, _P, _P, _I64, _P, _P, _I64, _I64, _P, _P, _I64],
        "kpop_attn_layer_row": [_P, _P, _F32] + [_P] * 5 + [_I64, _I64, _F32, _P] + [_I64] * 4 + [_P, _P, _I64],
        "kpop_mlp_layer_row": [_P, _P, _F32, _P, _P, _I64, _I64, _P, _P, _I64],
        "kpop_norm_head_row": [_P, _P, _F32, _P, _I64, _I64, _P, _P, _I64],
        "kpop_route_rows": [_P] * 3 + [_I64] * 6 + [_F32] + [_P] * 3 + [_I64],
        "kpop_moe_dispatch": [_P, _P] + [_I64] * 4 + [_P] * 3,
        "kpop_moe_combine": [_P] * 8 + [_I64] * 5,
        "kpop_mla_attend_rows": [_P] * 7 + [_I64] * 6 + [_F32, _I64],
        "kpop_mla_prep_rows": [_P, _I64, _P, _F32] + [_P] * 7 + [_I64] * 7,
    }
    for name, argtypes in [*signatures.items(), *((name + suffix, a) for name, a in typed_signatures.items()
                                                  for suffix in _SUFFIX.values())]:
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    return lib


_switched_off = False


@contextmanager
def switched_off():
    """Inside: `available()` is False, so every caller takes its torch path (for side-by-side
    measurements and tests of those paths)."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def library() -> ctypes.CDLL:
    """The loaded kernels, for callers that prepare their arguments once (kpop.rollout.builtin.
    row_plan); RuntimeError when they are unavailable."""
    lib = None if _switched_off else _library()
    if lib is None:
        raise RuntimeError("the native decode kernels are unavailable")
    return lib


def available() -> bool:
    return not _switched_off and _library() is not None


def fits(*tensors: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> bool:
    """All given tensors of `dtype` (float32 unless given; one of `DTYPES`), contiguous, on the
    CPU, and the kernels available."""
    return dtype in DTYPES and all(
        t is None or (t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()) for t in tensors
    ) and available()


def typed(name: str, dtype: torch.dtype):
    """The loaded kernel `name` of native_kernels_typed.h for storage type `dtype` (float32 or
    bfloat16: `DTYPES`); RuntimeError when the kernels are unavailable, KeyError for another dtype."""
    return getattr(library(), name + _SUFFIX[dtype])


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    n = x.shape[-1]
    if weight.numel() != n:
        raise ValueError(f"weight has {weight.numel()} values for rows of {n}")
    y = torch.empty_like(x)
    typed("kpop_rms_norm", x.dtype)(x.data_ptr(), weight.data_ptr(), y.data_ptr(), x.numel() // n, n, eps,
                                    torch.get_num_threads())
    return y


def mla_row(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
            kv_b: torch.Tensor, scaling: float) -> torch.Tensor:
    (heads, nope), rope, (T, rank) = q_nope.shape, q_rope.shape[-1], latent.shape
    v = kv_b.shape[0] // heads - nope
    if q_rope.shape != (heads, rope) or k_rope.shape != (T, rope) or kv_b.shape != (heads * (nope + v), rank) or v <= 0:
        raise ValueError(f"mla_row: shapes q_nope {tuple(q_nope.shape)}, q_rope {tuple(q_rope.shape)}, latent "
                         f"{tuple(latent.shape)}, k_rope {tuple(k_rope.shape)}, kv_b {tuple(kv_b.shape)}")
    out, scratch = torch.empty(heads, v), torch.empty(T + 2 * rank)
    _library().kpop_mla_row(
        q_nope.data_ptr(), q_rope.data_ptr(), latent.data_ptr(), k_rope.data_ptr(), kv_b.data_ptr(), out.data_ptr(),
        scratch.data_ptr(), heads, nope, rope, v, rank, T, scaling,
    )
    return out


def routes(x: torch.Tensor, gate) -> bool:
    """Whether `route_row` can route one row `x` for `gate` (a `MoEGate`)."""
    return x.numel() == gate.weight.shape[1] and routable(gate) and fits(x)


def routable(gate, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernels can route for `gate`: weight and bias of `dtype`, experts within their
    limit, k reachable in the kept groups."""
    experts = gate.weight.shape[0]
    per = experts // gate.n_group
    return (
        experts <= MAX_EXPERTS and experts % gate.n_group == 0 and gate.top_k <= per * gate.topk_group
        and fits(gate.weight, gate.expert_bias, dtype=dtype)
    )


def route_row(x: torch.Tensor, gate) -> tuple[list[int], list[float]]:
    experts, hidden = gate.weight.shape
    k = gate.top_k
    ids, weights = (ctypes.c_int64 * k)(), (ctypes.c_float * k)()
    _library().kpop_route_row(
        x.data_ptr(), gate.weight.data_ptr(), gate.expert_bias.data_ptr(), experts, hidden, gate.n_group,
        gate.topk_group, k, gate.routed_scaling_factor, ids, weights,
    )
    return list(ids), list(weights)


def route_rows(x: torch.Tensor, gate) -> tuple[torch.Tensor, torch.Tensor]:
    """`gate(x)`'s (expert ids [N, k] int64, weights [N, k] float32) for rows x [N, h] of the
    gate's dtype (float32 or bfloat16; `routable(gate, x.dtype)`), one native call, rows over
    torch's threads: each row's pick as `route_row`'s (ids in pick order, ties to the lower id)."""
    (experts, hidden), k, rows = gate.weight.shape, gate.top_k, x.shape[0]
    if x.dim() != 2 or x.shape[1] != hidden or not fits(x, dtype=x.dtype):
        raise ValueError(f"route_rows: x {tuple(x.shape)} ({x.dtype}) for a gate over {hidden} features")
    ids, weights, scratch = torch.empty(rows, k, dtype=torch.int64), torch.empty(rows, k), torch.empty(rows, hidden)
    typed("kpop_route_rows", x.dtype)(
        x.data_ptr(), gate.weight.data_ptr(), gate.expert_bias.data_ptr(), rows, experts, hidden, gate.n_group,
        gate.topk_group, k, gate.routed_scaling_factor, ids.data_ptr(), weights.data_ptr(), scratch.data_ptr(),
        torch.get_num_threads(),
    )
    return ids, weights


def mla_prep_rows(qkv: torch.Tensor, heads: int, nope: int, rope: int, kv_norm_w: torch.Tensor, kv_eps: float,
                  cos: torch.Tensor, sin: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                  lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA for several rows between its first product and its head products, one call: qkv [B, D]
    (the q | kv_a product's rows, D = heads (nope + rope) + r + rope, rows may be strided); row b's
    cache column lengths[b] in latent [B, cap, r] / k_rope [B, cap, rope] gets `rms_norm(c)` and
    `apply_interleaved(k_rope)` (cos/sin [B, rope / 2] float32), in place. Returns (q_nope [H, B,
    nope], q_rope [B, H, rope] rotated and rounded to qkv's dtype as `apply_interleaved` returns
    it), float32. qkv, the norm weight and the caches of one dtype of `DTYPES`."""
    (B, D), (_, cap, r) = qkv.shape, latent.shape
    shapes_ok = (D == heads * (nope + rope) + r + rope and k_rope.shape == (B, cap, rope) and latent.shape[0] == B
                 and kv_norm_w.shape == (r,) and cos.shape == sin.shape == (B, rope // 2) and lengths.shape == (B,)
                 and rope % 2 == 0 and 0 < rope <= MAX_HEAD_DIM)
    if not shapes_ok:
        raise ValueError(f"mla_prep_rows: qkv {tuple(qkv.shape)} for {heads} heads of {nope} + {rope}, latent "
                         f"{tuple(latent.shape)}, k_rope {tuple(k_rope.shape)}, cos {tuple(cos.shape)}")
    if not (qkv.stride(1) == 1 and fits(kv_norm_w, latent, k_rope, dtype=qkv.dtype) and fits(cos, sin)
            and lengths.dtype == torch.int64 and lengths.is_contiguous()):
        raise ValueError(f"mla_prep_rows: qkv, norm weight and caches of one dtype of {DTYPES}, contiguous rows; "
                         "cos/sin float32; lengths int64")
    q_nope, q_rope = torch.empty(heads, B, nope), torch.empty(B, heads, rope)
    typed("kpop_mla_prep_rows", qkv.dtype)(
        qkv.data_ptr(), qkv.stride(0), kv_norm_w.data_ptr(), kv_eps, cos.data_ptr(), sin.data_ptr(), latent.data_ptr(),
        k_rope.data_ptr(), lengths.data_ptr(), q_nope.data_ptr(), q_rope.data_ptr(), B, heads, nope, rope, r, cap,
        torch.get_num_threads(),
    )
    return q_nope, q_rope


def mla_attend_rows(q_lat: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                    lengths: torch.Tensor, scaling: float, columns: int) -> torch.Tensor:
    """Absorbed MLA attention of one new token per row between its two head products: q_lat [H, B,
    r] (q_nope W_uk per head), q_rope [B, H, rope] (rotated), both float32; latent [B, cap, r] and
    k_rope [B, cap, rope] the cache (a dtype of `DTYPES`), lengths [B] int64 < columns <= cap. Row b
    attends over columns 0..lengths[b]: ctx [H, B, r] float32 with ctx[h, b] = softmax_t(scaling
    (q_lat[h, b] . latent[b, t] + q_rope[b, h] . k_rope[b, t])) latent[b, :]: what
    `MultiLatentAttention._absorbed` computes between W_uk and W_uv, each cached column read once
    per row for all heads."""
    (H, B, r), (_, cap, rope) = q_lat.shape, k_rope.shape
    if (q_rope.shape != (B, H, rope) or latent.shape != (B, cap, r) or k_rope.shape[0] != B or lengths.shape != (B,)
            or not 0 < columns <= cap):
        raise ValueError(f"mla_attend_rows: q_lat {tuple(q_lat.shape)}, q_rope {tuple(q_rope.shape)}, latent "
                         f"{tuple(latent.shape)}, k_rope {tuple(k_rope.shape)}, lengths {tuple(lengths.shape)}, "
                         f"columns {columns}")
    if not (fits(q_lat, q_rope) and fits(latent, k_rope, dtype=latent.dtype) and lengths.dtype == torch.int64
            and lengths.is_contiguous()):
        raise ValueError("mla_attend_rows: contiguous CPU tensors, q_lat/q_rope float32, latent/k_rope of one dtype of "
                         f"{DTYPES} ({latent.dtype}, {k_rope.dtype}), lengths int64")
    ctx, scratch = torch.empty(H, B, r), torch.empty(B, H * columns)
    typed("kpop_mla_attend_rows", latent.dtype)(
        q_lat.data_ptr(), q_rope.data_ptr(), latent.data_ptr(), k_rope.data_ptr(), lengths.data_ptr(), ctx.data_ptr(),
        scratch.data_ptr(), B, H, r, rope, cap, columns, scaling, torch.get_num_threads(),
    )
    return ctx


def moe_dispatch(x: torch.Tensor, idx: torch.Tensor, experts: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A MoE layer's (row, slot) pairs idx [N, k] sorted by expert, stably: (pairs per expert, pos
    [N, k] each pair's sorted position, rows [N k, h] with rows[pos[t, s]] = x[t]); x [N, h] of a
    dtype of `DTYPES`. One pass, no host sync but the counts'."""
    (N, k), h = idx.shape, x.shape[-1]
    if x.shape != (N, h) or idx.dtype != torch.int64 or not idx.is_contiguous() or not 0 < experts <= MAX_EXPERTS:
        raise ValueError(f"moe_dispatch: x {tuple(x.shape)}, idx {tuple(idx.shape)} ({idx.dtype}), {experts} experts")
    if not fits(x, dtype=x.dtype):
        raise ValueError(f"moe_dispatch: x must be a contiguous CPU tensor of {DTYPES}, not {x.dtype}")
    counts, pos, rows = torch.empty(experts, dtype=torch.int64), torch.empty(N, k, dtype=torch.int64), x.new_empty(N * k, h)
    typed("kpop_moe_dispatch", x.dtype)(x.data_ptr(), idx.data_ptr(), N, k, experts, h, counts.data_ptr(), pos.data_ptr(),
                                        rows.data_ptr())
    listed = counts.tolist()
    if listed[0] < 0:
        raise ValueError(f"moe_dispatch: an expert id outside [0, {experts})")
    return listed, pos, rows


def moe_combine(blocks: list[torch.Tensor | None], counts: list[int], idx: torch.Tensor, pos: torch.Tensor,
                weights: torch.Tensor, shared: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The routed experts' outputs back on their rows: out [N, h] (the blocks' dtype), row t the sum
    over its pairs in increasing expert id of weights[t, s] times its expert's output row, in
    float32 from 0, rounded; then + shared[t] and residual[t] + that, each rounded (the roundings
    of `index_add_` into float32 zeros, `.to(dtype)` and two torch adds). blocks[e]: expert e's
    outputs [counts[e], h] on `moe_dispatch`'s rows (None where counts[e] is 0); idx and pos
    [N, k] as `moe_dispatch` took and gave them; weights [N, k] float32."""
    (N, k), live = idx.shape, [b for b in blocks if b is not None]
    dtype, h = live[0].dtype, live[0].shape[-1]
    shapes_ok = (
        len(blocks) == len(counts) <= MAX_EXPERTS and sum(counts) == N * k and pos.shape == weights.shape == (N, k)
        and all((b is None) == (n == 0) and (b is None or b.shape == (n, h)) for b, n in zip(blocks, counts))
        and all(t is None or t.shape == (N, h) for t in (shared, residual))
    )
    if not shapes_ok or not fits(*live, shared, residual, dtype=dtype) or not fits(weights) or not (
            idx.dtype == pos.dtype == torch.int64 and idx.is_contiguous() and pos.is_contiguous()):
        raise ValueError(f"moe_combine: blocks {[None if b is None else tuple(b.shape) for b in blocks]} for counts "
                         f"{counts}, idx {tuple(idx.shape)}, weights {tuple(weights.shape)} ({weights.dtype})")
    out = live[0].new_empty(N, h)
    typed("kpop_moe_combine", dtype)(
        (ctypes.c_void_p * len(blocks))(*(_ptr(b) for b in blocks)), (ctypes.c_int64 * len(counts))(*counts),
        idx.data_ptr(), pos.data_ptr(), weights.data_ptr(), _ptr(shared), _ptr(residual), out.data_ptr(), N, k,
        len(blocks), h, torch.get_num_threads(),
    )
    return out


def kv_attend(qkv: torch.Tensor, heads: int, kv_heads: int, cos: torch.Tensor, sin: torch.Tensor,
              keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, scale: float, columns: int) -> torch.Tensor:
    """One new token per row attending over a key/value cache, on torch's threads where built with
    OpenMP. qkv [B, (heads + 2 kv_heads) d] (query heads, key heads, value heads), cos/sin [B, d]
    (HF's full-width rotate-half tables at each row's position), keys/values [B, kv_heads, cap, d],
    lengths [B] int64 with every length < columns <= cap. Per row b: k and each query head
    rotated (`q cos + rotate_half(q) sin`), k and v written at column lengths[b] of keys/values in
    place, then out[b, h] = softmax(scale q_h K^T) V over columns 0..lengths[b] of the head's key
    group (query heads grouped over key heads as HF's `repeat_kv`). Returns out [B, heads * d].
    qkv, keys, values and out are of one dtype of `DTYPES`, cos/sin float32."""
    B, kv, cap, d = keys.shape
    if (kv != kv_heads or heads % kv_heads or values.shape != keys.shape or qkv.shape != (B, (heads + 2 * kv) * d)
            or cos.shape != (B, d) or sin.shape != (B, d) or lengths.shape != (B,) or not 0 < columns <= cap or d % 2):
        raise ValueError(f"kv_attend: shapes qkv {tuple(qkv.shape)}, keys {tuple(keys.shape)}, values "
                         f"{tuple(values.shape)}, cos {tuple(cos.shape)}, lengths {tuple(lengths.shape)}, "
                         f"heads {heads}/{kv_heads}, columns {columns}")
    if lengths.dtype != torch.int64 or not lengths.is_contiguous():
        raise ValueError("kv_attend: lengths must be a contiguous int64 tensor")
    if {qkv.dtype, keys.dtype, values.dtype} != {qkv.dtype} or qkv.dtype not in DTYPES or not fits(cos, sin):
        raise ValueError(f"kv_attend: qkv, keys and values of one dtype of {DTYPES} ({qkv.dtype}, {keys.dtype}, "
                         f"{values.dtype}), cos/sin float32 ({cos.dtype})")
    group = heads // kv
    widened = (2 * group + 2) * d if qkv.dtype != torch.float32 else 0  # the task's float copies
    out, scratch = qkv.new_empty(B, heads * d), torch.empty(B * kv, group * (columns + d) + widened)
    typed("kpop_kv_attend", qkv.dtype)(
        qkv.data_ptr(), qkv.shape[1], cos.data_ptr(), sin.data_ptr(), keys.data_ptr(), values.data_ptr(),
        lengths.data_ptr(), out.data_ptr(), scratch.data_ptr(), B, heads, kv, d, cap, columns, scale,
        torch.get_num_threads(),
    )
    return out


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """`F.silu(gate) * up` with gate, up = gate_up.chunk(2, -1), in one pass."""
    n2 = gate_up.shape[-1]
    if n2 % 2:
        raise ValueError(f"swiglu: the last dim ({n2}) holds gate and up halves")
    out = gate_up.new_empty(*gate_up.shape[:-1], n2 // 2)
    typed("kpop_swiglu", gate_up.dtype)(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // n2, n2 // 2, torch.get_num_threads())
    return out


def ffn_row(x: torch.Tensor, gate_up: torch.Tensor | None, down: torch.Tensor | None, ids: list[int],
            weights: list[float], dense_gate_up: torch.Tensor | None, dense_down: torch.Tensor | None) -> torch.Tensor:
    h, k = x.numel(), len(ids)
    experts, inner = (0, 0) if gate_up is None else (gate_up.shape[0], gate_up.shape[1] // 2)
    dense = 0 if dense_down is None else dense_down.shape[1]
    shapes_ok = (
        (gate_up is None) == (down is None) and (dense_gate_up is None) == (dense_down is None) and bool(k or dense)
        and (gate_up is None or (gate_up.shape == (experts, 2 * inner, h) and down.shape == (experts, h, inner)))
        and (dense_gate_up is None or (dense_gate_up.shape == (2 * dense, h) and dense_down.shape == (h, dense)))
    )
    if not shapes_ok or len(weights) != k or list(ids) != sorted(set(ids)) or any(not 0 <= e < experts for e in ids):
        shape = lambda t: None if t is None else tuple(t.shape)  # noqa: E731
        raise ValueError(f"ffn_row: x [{h}], experts {list(ids)} (weights {list(weights)}) of gate_up {shape(gate_up)}, "
                         f"down {shape(down)}; dense {shape(dense_gate_up)}, {shape(dense_down)}")
    dtype = (dense_down if gate_up is None else gate_up).dtype
    out, scratch = torch.empty(h), torch.empty(3 * (k * inner + dense))
    typed("kpop_ffn_row", dtype)(
        x.data_ptr(), _ptr(gate_up), _ptr(down), (ctypes.c_int64 * max(k, 1))(*ids), (ctypes.c_float * max(k, 1))(*weights),
        k, inner, _ptr(dense_gate_up), _ptr(dense_down), dense, h, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads(),
    )
    return out


def _lightning_heads_ok(heads: int, d: int, half: int, groups: int, q_norm, k_norm) -> bool:
    """The per-head shape rules both Lightning kernels share: the head within the kernel's limit,
    groups dividing H d, RoPE within the head, q and k norms both or neither."""
    return d <= MAX_HEAD_DIM and (heads * d) % groups == 0 and 2 * half <= d and (q_norm is None) == (k_norm is None)


def lightning_layer_row(h: torch.Tensor, norm_w: torch.Tensor, norm_eps: float, w_qkvg: torch.Tensor, silu_qkv: bool,
                        state: torch.Tensor, decay: torch.Tensor, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None,
                        cos: torch.Tensor | None, sin: torch.Tensor | None, g_norm: torch.Tensor, groups: int,
                        qk_eps: float, g_eps: float, scale: float, w_dense: torch.Tensor) -> torch.Tensor:
    hidden, (heads, d) = h.numel(), (state.shape[-3], state.shape[-1])
    half = 0 if cos is None else cos.numel()
    if (norm_w.numel() != hidden or w_qkvg.shape != (4 * heads * d, hidden) or w_dense.shape != (hidden, heads * d)
            or state.numel() != heads * d * d or not _lightning_heads_ok(heads, d, half, groups, q_norm, k_norm)):
        raise ValueError(f"lightning_layer_row: shapes h [{hidden}], w_qkvg {tuple(w_qkvg.shape)}, state "
                         f"{tuple(state.shape)}, w_dense {tuple(w_dense.shape)}, groups {groups}, rope half {half}")
    out, scratch = torch.empty(hidden, dtype=h.dtype), torch.empty(lightning_scratch(hidden, heads, d))
    typed("kpop_lightning_layer_row", h.dtype)(
        h.data_ptr(), norm_w.data_ptr(), norm_eps, w_qkvg.data_ptr(), int(silu_qkv), state.data_ptr(), decay.data_ptr(),
        _ptr(q_norm), _ptr(k_norm), _ptr(cos), _ptr(sin), g_norm.data_ptr(), heads, d, half, groups, qk_eps, g_eps,
        scale, w_dense.data_ptr(), hidden, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads(),
    )
    return out


def lightning_rows(qkvg: torch.Tensor, silu_qkv: bool, state: torch.Tensor, decay: torch.Tensor,
                   q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, cos: torch.Tensor | None,
                   sin: torch.Tensor | None, g_norm: torch.Tensor, groups: int, qk_eps: float, g_eps: float,
                   scale: float) -> torch.Tensor:
    rows, (heads, d) = state.shape[0], (state.shape[-3], state.shape[-1])
    half = 0 if cos is None else cos.numel() // rows
    if (qkvg.numel() != rows * 4 * heads * d or state.shape != (rows, heads, d, d)
            or not _lightning_heads_ok(heads, d, half, groups, q_norm, k_norm)
            or (cos is not None and (cos.numel() != rows * half or sin.numel() != rows * half))):
        raise ValueError(f"lightning_rows: shapes qkvg {tuple(qkvg.shape)}, state {tuple(state.shape)}, groups "
                         f"{groups}, cos {None if cos is None else tuple(cos.shape)}")
    out = qkvg.new_empty(rows, heads * d)
    scratch = None if qkvg.dtype == torch.float32 else torch.empty(rows, 5 * heads * d)  # float copies of each row
    typed("kpop_lightning_rows", qkvg.dtype)(
        qkvg.data_ptr(), int(silu_qkv), state.data_ptr(), decay.data_ptr(), _ptr(q_norm), _ptr(k_norm), _ptr(cos),
        _ptr(sin), g_norm.data_ptr(), out.data_ptr(), _ptr(scratch), rows, heads, d, half, groups, qk_eps, g_eps, scale,
        torch.get_num_threads(),
    )
    return out


def mla_layer_row(h: torch.Tensor, norm_w: torch.Tensor, norm_eps: float, w_qkva: torch.Tensor, kv_norm_w: torch.Tensor,
                  kv_eps: float, cos: torch.Tensor, sin: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                  length: int, kv_b: torch.Tensor, scaling: float, w_dense: torch.Tensor, heads: int, nope: int,
                  rope: int, v: int) -> torch.Tensor:
    hidden, (cap, rank) = h.numel(), latent.shape
    if (w_qkva.shape != (heads * (nope + rope) + rank + rope, hidden) or k_rope.shape != (cap, rope) or rope % 2
            or kv_norm_w.numel() != rank or cos.numel() != rope // 2 or sin.numel() != rope // 2 or not 0 <= length < cap
            or kv_b.shape != (heads * (nope + v), rank) or w_dense.shape != (hidden, heads * v) or norm_w.numel() != hidden):
        raise ValueError(f"mla_layer_row: shapes h [{hidden}], w_qkva {tuple(w_qkva.shape)}, latent {tuple(latent.shape)}, "
                         f"k_rope {tuple(k_rope.shape)}, kv_b {tuple(kv_b.shape)}, w_dense {tuple(w_dense.shape)}, "
                         f"length {length}, heads {heads} x (nope {nope}, rope {rope}, v {v})")
    threads = torch.get_num_threads()
    out = torch.empty(hidden, dtype=h.dtype)
    scratch = torch.empty(mla_scratch(hidden, heads, nope, rope, v, rank, length + 1, threads))
    typed("kpop_mla_layer_row", h.dtype)(
        h.data_ptr(), norm_w.data_ptr(), norm_eps, w_qkva.data_ptr(), kv_norm_w.data_ptr(), kv_eps, cos.data_ptr(),
        sin.data_ptr(), latent.data_ptr(), k_rope.data_ptr(), length, kv_b.data_ptr(), scaling, w_dense.data_ptr(),
        hidden, heads, nope, rope, v, rank, out.data_ptr(), scratch.data_ptr(), threads,
    )
    return out


def lightning_scratch(hidden: int, heads: int, d: int) -> int:
    """Floats of scratch `kpop_lightning_layer_row` uses: x, q|k|v|gate, o."""
    return hidden + 5 * heads * d


def mla_scratch(hidden: int, heads: int, nope: int, rope: int, v: int, rank: int, columns: int, threads: int) -> int:
    """Floats of scratch `kpop_mla_layer_row` uses: x, q|c|kr, q's two parts, o, each thread's head."""
    return hidden + 2 * heads * (nope + rope) + rank + rope + heads * v + threads * (columns + 2 * rank)
