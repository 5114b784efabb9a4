"""`Slab`: the decoding state of the running rows, left-padded to a common width.

Continuous batching steps rows of different lengths together. A slab stores a model's cache as a
flat list of tensors, each with the dimension that indexes token columns (`None` for state whose
size does not grow with the sequence, e.g. the hybrid's Lightning [H, d, d] matrices). Dimension 0
is always the row. Row i's real tokens occupy columns [pad[i], width); attention layers mask the
padding with `attention_mask(...)` and take per-row `positions()`, so a padded row computes what
it would compute alone.

Invariants:
- A slab is never mutated: `merge` and `select` return new slabs.
- Padding columns hold zeros (finite: masked attention weights are exactly 0 and 0 * 0 = 0).
- `select` cuts columns that are padding in every kept row, so memory follows the live rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Slab:
    tensors: list[torch.Tensor]
    col_dims: tuple[int | None, ...]  # per tensor: the token-column dimension, or None
    pad: torch.Tensor  # [B] long
    width: int

    @property
    def rows(self) -> int:
        return int(self.pad.shape[0])

    def attention_mask(self, new_tokens: int = 1) -> torch.Tensor:
        """[B, width + new_tokens] long: 0 on padding, 1 on real and new tokens."""
        cols = torch.arange(self.width + new_tokens, device=self.pad.device)[None, :]
        return (cols >= self.pad[:, None]).long()

    def positions(self) -> torch.Tensor:
        """[B, 1]: the position of each row's next token (its real length)."""
        return (self.width - self.pad)[:, None]

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def new_slab(tensors: list[torch.Tensor], col_dims: tuple[int | None, ...], width: int) -> Slab:
    rows = tensors[0].shape[0]
    return Slab(list(tensors), col_dims, torch.zeros(rows, dtype=torch.long, device=tensors[0].device), width)


def _left_pad(t: torch.Tensor, n: int, dim: int | None) -> torch.Tensor:
    if n == 0 or dim is None:
        return t
    spec = [0, 0] * (t.dim() - 1 - dim) + [n, 0]  # F.pad counts dimensions from the last
    return F.pad(t, spec)


def merge(a: Slab | None, b: Slab) -> Slab:
    """a's rows then b's, re-padded to the wider of the two."""
    if a is None:
        return b
    width = max(a.width, b.width)
    tensors = [
        torch.cat([_left_pad(x, width - a.width, d), _left_pad(y, width - b.width, d)])
        for x, y, d in zip(a.tensors, b.tensors, a.col_dims)
    ]
    pad = torch.cat([a.pad + (width - a.width), b.pad + (width - b.width)])
    return Slab(tensors, a.col_dims, pad, width)


def select(slab: Slab, rows: list[int]) -> Slab | None:
    """The slab of `rows` (in that order), without the columns none of them uses; None if empty."""
    if not rows:
        return None
    idx = torch.tensor(rows, dtype=torch.long, device=slab.pad.device)
    pad = slab.pad[idx]
    cut = int(pad.min())
    tensors = []
    for t, d in zip(slab.tensors, slab.col_dims):
        t = t.index_select(0, idx)
        if cut and d is not None:
            t = t.narrow(d, cut, t.shape[d] - cut).contiguous()
        tensors.append(t)
    return Slab(tensors, slab.col_dims, pad - cut, slab.width - cut)
