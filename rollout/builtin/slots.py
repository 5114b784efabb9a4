"""`SlotCache`: preallocated per-row decoding state of the running sequences, written in place.

Row i of every tensor belongs to the i-th running sequence; its real tokens occupy columns
[0, length_i) (no left padding: each row has its own length, attention masks the columns past it).
A tensor either has a token-column dimension (keys/values, MLA latents) or none (the hybrid's
Lightning [H, d, d] states, whose size does not grow with the sequence).

Invariants:
- Capacity grows geometrically (rows and columns double, columns up to `max_cols`), so appending
  a token is O(1) amortised: a decode step writes one column per row, it never copies the cache.
  A reallocation may reserve more columns (`reserve_cols`): the scheduler reserves what its
  running sequences can reach, so a batch usually never grows after its prefill.
- `move_row(src, dst)` copies a row; the scheduler uses it to keep the running rows dense
  (a finished row is replaced by the last one), so a step always works on rows [0, n).
- `release()` drops every tensor: an engine with nothing running holds no cache memory.
- Column contents past a row's length are undefined (decode masks them, prefill overwrites them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheSpec:
    """One tensor of the cache: per-row shape with `col_dim` (an index into `row_shape`) as the
    token-column dimension, or None; dtype of the stored values."""

    row_shape: tuple[int, ...]
    col_dim: int | None
    dtype: torch.dtype


class SlotCache:
    def __init__(self, specs: list[CacheSpec], max_rows: int, max_cols: int, device: torch.device | str = "cpu") -> None:
        self.specs, self.max_rows, self.max_cols, self.device = specs, max_rows, max_cols, torch.device(device)
        self.tensors: list[torch.Tensor] = []
        self.row_cap = self.col_cap = 0

    def _allocate(self, rows: int, cols: int) -> list[torch.Tensor]:
        out = []
        for spec in self.specs:
            shape = list(spec.row_shape)
            if spec.col_dim is not None:
                shape[spec.col_dim] = cols
            out.append(torch.zeros([rows, *shape], dtype=spec.dtype, device=self.device))
        return out

    def ensure(self, rows: int, cols: int, reserve_cols: int = 0) -> None:
        """Make room for `rows` rows of `cols` columns, keeping what is stored; a reallocation
        also makes room for `reserve_cols` columns (the columns the caller expects to need)."""
        if rows > self.max_rows or cols > self.max_cols:
            raise ValueError(f"cache of {rows} x {cols} exceeds the engine's {self.max_rows} x {self.max_cols}")
        if rows <= self.row_cap and cols <= self.col_cap:
            return
        new_rows = min(self.max_rows, max(rows, 2 * self.row_cap, 1))
        new_cols = min(self.max_cols, max(cols, 2 * self.col_cap, 16, reserve_cols))
        fresh = self._allocate(new_rows, new_cols)
        for old, new, spec in zip(self.tensors, fresh, self.specs):
            dst = new[: self.row_cap]
            if spec.col_dim is not None:
                dst = dst.narrow(spec.col_dim + 1, 0, self.col_cap)
            dst.copy_(old)
        self.tensors, self.row_cap, self.col_cap = fresh, new_rows, new_cols

    def write_rows(self, start: int, values: list[torch.Tensor]) -> None:
        """Store prefilled state for rows [start, start + n): values[j] is [n, ...] with its column
        dimension (if any) as long as the prompt."""
        for t, v, spec in zip(self.tensors, values, self.specs):
            dst = t[start : start + v.shape[0]]
            if spec.col_dim is not None:
                dst = dst.narrow(spec.col_dim + 1, 0, v.shape[spec.col_dim + 1])
            dst.copy_(v)

    def move_row(self, src: int, dst: int, cols: int) -> None:
        """Copy row `src` (its first `cols` columns) onto row `dst`."""
        for t, spec in zip(self.tensors, self.specs):
            s, d = t[src], t[dst]
            if spec.col_dim is not None:
                s, d = s.narrow(spec.col_dim, 0, cols), d.narrow(spec.col_dim, 0, cols)
            d.copy_(s)

    def release(self) -> None:
        self.tensors, self.row_cap, self.col_cap = [], 0, 0

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)
