"""Recipes: per GEMM and per operand, which grid, rounding, block scaling and RHT to use.

The three training GEMMs of a linear layer Y = X·Wᵀ, each written as lhs·rhsᵀ with both operands
quantised along their last axis, the contraction axis:

    fprop  Y  = X  · Wᵀ     lhs = X   (tokens × in),   rhs = W   (out × in)
    dgrad  dX = dY · W      lhs = dY  (tokens × out),  rhs = Wᵀ  (in × out)
    wgrad  dW = dYᵀ · X     lhs = dYᵀ (out × tokens),  rhs = Xᵀ  (in × tokens)

A `GemmSpec` holds an `OperandSpec` for lhs and rhs and the RHT size applied to both (None = off).
`OperandSpec.grid = None` leaves that operand in high precision.

Built-in recipes (`make_recipe(name)`):
- ufp4:  uniform INT4 grid, 1×16 blocks, E4M3 block scales + FP32 tensor scale; RHT (d = 16) on
         all three GEMMs; SR on dY only (dgrad and wgrad lhs), every other operand RTN.
- nvfp4: E2M1, 1×16 blocks, 16×16 blocks for W, E4M3 + FP32 scales; RHT (d = 16) on wgrad only;
         SR on dY; RTN on X and W.
- mxfp4: E2M1, 1×32 blocks, E8M0 scales; RHT (d = 32) on wgrad only; SR on dY.
- bf16:  nothing quantised (the Function then equals F.linear in the input precision).
SR operands with E4M3 scales get the 17/16 scale headroom that keeps SR unbiased (see scaling.py).
`HighPrecision` says which layers `apply` leaves as plain nn.Linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from kpop.quant.rounding import Rounding
from kpop.quant.scaling import BlockFormat, ScaleKind

GemmName = Literal["fprop", "dgrad", "wgrad"]
GEMMS: tuple[GemmName, ...] = ("fprop", "dgrad", "wgrad")
OPERAND_NAMES: dict[str, tuple[str, str]] = {"fprop": ("x", "w"), "dgrad": ("dy", "w"), "wgrad": ("dy", "x")}
RECIPE_NAMES = ("bf16", "ufp4", "nvfp4", "mxfp4")
SR_HEADROOM = 17.0 / 16.0


@dataclass(frozen=True)
class OperandSpec:
    grid: str | None = None
    rounding: Rounding = "rtn"
    fmt: BlockFormat = field(default_factory=BlockFormat)

    @property
    def quantised(self) -> bool:
        return self.grid is not None


@dataclass(frozen=True)
class GemmSpec:
    lhs: OperandSpec = field(default_factory=OperandSpec)
    rhs: OperandSpec = field(default_factory=OperandSpec)
    rht: int | None = None


@dataclass(frozen=True)
class HighPrecision:
    """Layers `apply` keeps in high precision: the first/last transformer blocks and any linear
    whose qualified name matches one of `patterns` (fnmatch syntax)."""

    first_blocks: int = 1
    last_blocks: int = 1
    patterns: tuple[str, ...] = ("*lm_head*",)


@dataclass(frozen=True)
class Recipe:
    name: str
    fprop: GemmSpec
    dgrad: GemmSpec
    wgrad: GemmSpec
    high_precision: HighPrecision = field(default_factory=HighPrecision)
    rht_seed: int = 0
    fp8_gemm: bool = False  # on CUDA, run GEMMs through block-scaled FP8 matmuls (fp8_gemm.py)

    def gemm(self, name: GemmName) -> GemmSpec:
        return getattr(self, name)

    @property
    def enabled(self) -> bool:
        return any(g.lhs.quantised or g.rhs.quantised or g.rht for g in (self.fprop, self.dgrad, self.wgrad))


def _op(grid: str, rounding: Rounding = "rtn", block: tuple[int, int] = (1, 16), scale: ScaleKind = "e4m3"):
    headroom = SR_HEADROOM if rounding == "sr" and scale == "e4m3" else 1.0
    return OperandSpec(grid, rounding, BlockFormat(block, scale, headroom))


def _ufp4(rht: int) -> tuple[GemmSpec, GemmSpec, GemmSpec]:
    x, w, dy = _op("uniform"), _op("uniform"), _op("uniform", "sr")
    return GemmSpec(x, w, rht), GemmSpec(dy, w, rht), GemmSpec(dy, x, rht)


def _nvfp4(rht: int) -> tuple[GemmSpec, GemmSpec, GemmSpec]:
    x, w, dy = _op("e2m1"), _op("e2m1", block=(16, 16)), _op("e2m1", "sr")
    return GemmSpec(x, w), GemmSpec(dy, w), GemmSpec(dy, x, rht)


def _mxfp4(rht: int) -> tuple[GemmSpec, GemmSpec, GemmSpec]:
    x = _op("e2m1", block=(1, 32), scale="e8m0")
    dy = _op("e2m1", "sr", block=(1, 32), scale="e8m0")
    return GemmSpec(x, x), GemmSpec(dy, x), GemmSpec(dy, x, rht)


_BUILDERS = {"ufp4": (_ufp4, 16), "nvfp4": (_nvfp4, 16), "mxfp4": (_mxfp4, 32)}


def make_recipe(
    name: str,
    *,
    first_blocks: int = 1,
    last_blocks: int = 1,
    keep_lm_head: bool = True,
    rht_size: int | None = None,
    rht_seed: int = 0,
    fp8_gemm: bool = False,
) -> Recipe:
    """A built-in recipe by name; `rht_size` overrides its Hadamard size where it uses one."""
    hp = HighPrecision(first_blocks, last_blocks, ("*lm_head*",) if keep_lm_head else ())
    if name == "bf16":
        off = GemmSpec()
        return Recipe("bf16", off, off, off, hp, rht_seed, fp8_gemm)
    if name not in _BUILDERS:
        raise ValueError(f"unknown recipe {name!r}; known: {RECIPE_NAMES}")
    build, default_rht = _BUILDERS[name]
    fprop, dgrad, wgrad = build(rht_size or default_rht)
    return Recipe(name, fprop, dgrad, wgrad, hp, rht_seed, fp8_gemm)


def with_gemm(recipe: Recipe, name: GemmName, spec: GemmSpec) -> Recipe:
    """A copy of `recipe` with one GEMM's spec replaced (for experiments and tests)."""
    return replace(recipe, **{name: spec})
