"""GPU smoke check: the UFP4 recipe's FP8 tensor-core GEMM path against the CPU emulation.

    python deploy/gpu_checks/fp8_gemm.py

For each layer shape (tokens x in_features -> out_features), `fp4_linear` with the ufp4 recipe
runs on CUDA with `fp8_gemm=True` (UFP4 codes and block scales fed to the FP8 tensor cores,
kpop.quant.fp8_gemm) and on the CPU with the plain emulation, dequant(A) . dequant(B)^T, from
the same inputs and seed. Pass: for every shape

    max |gpu - cpu| <= 1e-3 * max |cpu|

(the two sides quantise identically, test_quant_fp8_gemm checks the codes; what remains is the
accumulation order). Also reports the FP8 path's time against the emulation's on the GPU.
Prints one JSON line {"ok", "message", "shapes": [...]}.
"""

from __future__ import annotations

import json
import sys
import time

import torch

SHAPES = ((64, 256, 128), (512, 2048, 2048), (2048, 4096, 1024))
TOL = 1e-3


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    fn(*args)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> int:
    from kpop.quant.linear import fp4_linear
    from kpop.quant.recipe import make_recipe

    fp8, emulated = make_recipe("ufp4", fp8_gemm=True), make_recipe("ufp4")
    rows, worst = [], 0.0
    for m, k, n in SHAPES:
        gen = torch.Generator().manual_seed(m + k + n)
        x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) * k**-0.5
        ref = fp4_linear(x, w, None, emulated)
        xg, wg = x.cuda(), w.cuda()
        got, fp8_s = timed(fp4_linear, xg, wg, None, fp8)
        _, emu_s = timed(fp4_linear, xg, wg, None, emulated)
        err = float((got.cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        worst = max(worst, err)
        rows.append({"shape": [m, k, n], "relative_error": err, "fp8_s": round(fp8_s, 5),
                     "emulated_gpu_s": round(emu_s, 5)})
    ok = worst <= TOL
    print(json.dumps({"ok": ok, "message": f"UFP4 FP8 GEMM vs CPU emulation on {len(rows)} shapes: worst relative "
                      f"error {worst:.2e} ({'<=' if ok else '>'} {TOL:g})", "shapes": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
