"""`HybridCache`: the decoding state of the hybrid model, one entry per decoder layer.

  * Lightning layer -> a float32 tensor [B, H, head_dim, head_dim] (constant size in T)
  * MLA layer       -> `MLACache(latent [B, T, kv_lora_rank], k_rope [B, T, qk_rope_head_dim])`

All rows of a batch share one length (`seq_len`); ragged prompts are left-padded and masked.
`select(rows)` keeps a subset of rows (finished sequences leave, beams reorder), `stack` joins
caches of equal length: the operations a continuous-batching engine needs. `nbytes()` reports the
memory held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kpop.models.layers.mla import MLACache

LayerState = torch.Tensor | MLACache | None


@dataclass
class HybridCache:
    layers: list[LayerState]
    seq_len: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, num_layers: int) -> HybridCache:
        return cls([None] * num_layers)

    def nbytes(self) -> int:
        total = 0
        for entry in self.layers:
            if isinstance(entry, MLACache):
                total += entry.latent.nbytes + entry.k_rope.nbytes
            elif entry is not None:
                total += entry.nbytes
        return total

    def select(self, rows: torch.Tensor) -> HybridCache:
        def pick(entry: LayerState) -> LayerState:
            if isinstance(entry, MLACache):
                return MLACache(entry.latent[rows], entry.k_rope[rows])
            return None if entry is None else entry[rows]

        return HybridCache([pick(e) for e in self.layers], self.seq_len)

    @staticmethod
    def stack(caches: list[HybridCache]) -> HybridCache:
        if len({c.seq_len for c in caches}) != 1:
            raise ValueError("caches of different lengths cannot be stacked; left-pad to a common length")
        layers: list[LayerState] = []
        for entries in zip(*(c.layers for c in caches)):
            if isinstance(entries[0], MLACache):
                layers.append(MLACache(torch.cat([e.latent for e in entries]), torch.cat([e.k_rope for e in entries])))
            else:
                layers.append(None if entries[0] is None else torch.cat(entries))
        return HybridCache(layers, caches[0].seq_len)
