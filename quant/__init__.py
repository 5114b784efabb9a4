"""kpop.quant: 4-bit (FP4 / uniform INT4) training GEMMs in plain PyTorch.

Layout, one idea per module:
  grids       the 4-bit value sets (E2M1, uniform INT4 / E1M2)
  rounding    round-to-nearest-even and stochastic rounding onto a grid
  scaling     block scaling: E4M3 block scales + FP32 tensor scale (NVFP4), E8M0 (MXFP4)
  hadamard    random Hadamard transform (RHT) along the contraction axis
  recipe      per-GEMM, per-operand choice of grid / rounding / RHT / scaling
  gemm        one quantised GEMM  a·bᵀ  (CPU emulation, optional FP8 GPU path)
  fp8_gemm    exact block-scaled GEMM through FP8 tensor cores (CUDA only)
  linear      FP4LinearFunction / FP4Linear: the three training GEMMs
  apply       swap a model's nn.Linear layers for FP4Linear according to a recipe
  analysis    shrinkage metrics (rel. MSE, gain error, signed error, GEMM gain β)

Only `torch` is needed. Import the submodules directly (`from kpop.quant.recipe import ...`);
the names re-exported here are the public entry points.
"""

from kpop.quant.apply import apply, apply_spec
from kpop.quant.recipe import Recipe, make_recipe

__all__ = ["Recipe", "apply", "apply_spec", "make_recipe"]
