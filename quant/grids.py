"""4-bit value grids.

A grid is the ascending tuple of its non-negative magnitudes, 0 first; values are signed
(sign-magnitude), so the grid is symmetric about 0. Its largest magnitude is `qmax`, the value a
block's absolute maximum is scaled onto.

- E2M1 (OCP FP4): {0, 0.5, 1, 1.5, 2, 3, 4, 6}, qmax 6. Non-uniform: the bins of 2 and 4 are
  asymmetric ([1.75, 2.5] and [3.5, 5]), the source of its shrinkage bias.
- INT4 sign-magnitude ("uniform"): {0, 1, ..., 7}, qmax 7. Symmetric interior bins.
- E1M2 with exponent bias 0: {0, 0.5, ..., 3.5} = INT4 × 0.5. Under absmax block scaling the scale
  absorbs the factor 0.5, so E1M2 and INT4 dequantise to bit-identical values: one grid.

Invariant: the index of a point within `points` is its 3-bit magnitude code, and "even" in
round-half-to-even means an even code (for E2M1 that is mantissa bit 0; for INT4 an even integer).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Grid:
    name: str
    points: tuple[float, ...]

    @property
    def qmax(self) -> float:
        return self.points[-1]

    def tensor(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return _points_tensor(self.points, str(device), dtype)


@lru_cache(maxsize=64)
def _points_tensor(points: tuple[float, ...], device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(points, dtype=dtype, device=device)


E2M1 = Grid("e2m1", (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0))
INT4 = Grid("int4", tuple(float(i) for i in range(8)))
E1M2 = Grid("e1m2", tuple(0.5 * i for i in range(8)))

GRIDS: dict[str, Grid] = {"e2m1": E2M1, "int4": INT4, "uniform": INT4, "e1m2": E1M2}


def get_grid(name: str) -> Grid:
    try:
        return GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown grid {name!r}; known: {sorted(GRIDS)}") from None
