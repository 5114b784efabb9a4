"""Model adapters: prefill and one decode step of a model over a `Slab`.

- `HybridAdapter`: `BailingMoeV2_5ForCausalLM` (kpop.models.hybrid). Its `HybridCache` holds per
  layer either a Lightning state [B, H, d, d] (no columns) or an `MLACache` (latent [B, T, r] and
  rotated k_rope [B, T, rope], columns on dim 1). The model masks padded latents with the 0/1
  attention mask and takes per-row `position_ids`; padded Lightning rows do not exist (the state
  is per row).
- `KVAdapter`: standard attention through transformers (`LlamaForCausalLM` and the like): per
  layer keys and values [B, H, T, D] (columns on dim 2), handed to the model as a `DynamicCache`.

Contract (both): `prefill(ids [n, T])` -> (logits of the last position [n, V], slab of n rows of
width T, no padding); `decode(slab, tokens [B])` -> (logits [B, V], slab one column wider). Both
run under `torch.inference_mode()`; neither mutates its input slab.
"""

from __future__ import annotations

import torch

from kpop.rollout.builtin.slab import Slab, new_slab


class HybridAdapter:
    def __init__(self, model) -> None:
        from kpop.models.layers.mla import MLACache

        self.model = model
        self._mla_cls = MLACache
        n = model.config.num_hidden_layers
        self.is_mla = [bool(model.config.is_mla_layer(i)) for i in range(n)]
        self.col_dims = tuple(d for mla in self.is_mla for d in ((1, 1) if mla else (None,)))

    def _pack(self, cache) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for mla, entry in zip(self.is_mla, cache.layers):
            out += [entry.latent, entry.k_rope] if mla else [entry]
        return out

    def _unpack(self, slab: Slab):
        from kpop.models.hybrid.cache import HybridCache

        layers, it = [], iter(slab.tensors)
        for mla in self.is_mla:
            layers.append(self._mla_cls(next(it), next(it)) if mla else next(it))
        return HybridCache(layers, slab.width)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Slab]:
        out = self.model(ids, past_key_values=self.model.new_cache(), use_cache=True)
        return out.logits[:, -1], new_slab(self._pack(out.past_key_values), self.col_dims, ids.shape[1])

    @torch.inference_mode()
    def decode(self, slab: Slab, tokens: torch.Tensor) -> tuple[torch.Tensor, Slab]:
        out = self.model(
            tokens[:, None], attention_mask=slab.attention_mask(1), position_ids=slab.positions(),
            past_key_values=self._unpack(slab), use_cache=True,
        )
        tensors = self._pack(out.past_key_values)
        return out.logits[:, -1], Slab(tensors, self.col_dims, slab.pad, slab.width + 1)


class KVAdapter:
    def __init__(self, model) -> None:
        self.model = model
        self.num_layers = model.config.num_hidden_layers
        self.col_dims = (2,) * (2 * self.num_layers)

    @staticmethod
    def _pack(cache) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for layer in cache.layers:
            out += [layer.keys, layer.values]
        return out

    def _unpack(self, slab: Slab):
        from transformers import DynamicCache

        t = slab.tensors
        return DynamicCache(ddp_cache_data=[(t[2 * i], t[2 * i + 1]) for i in range(self.num_layers)])

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Slab]:
        from transformers import DynamicCache

        cache = DynamicCache()
        out = self.model(ids, past_key_values=cache, use_cache=True)
        return out.logits[:, -1], new_slab(self._pack(out.past_key_values), self.col_dims, ids.shape[1])

    @torch.inference_mode()
    def decode(self, slab: Slab, tokens: torch.Tensor) -> tuple[torch.Tensor, Slab]:
        out = self.model(
            tokens[:, None], attention_mask=slab.attention_mask(1), position_ids=slab.positions(),
            past_key_values=self._unpack(slab), use_cache=True,
        )
        return out.logits[:, -1], Slab(self._pack(out.past_key_values), self.col_dims, slab.pad, slab.width + 1)


def adapter_for(model) -> HybridAdapter | KVAdapter:
    from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM

    return HybridAdapter(model) if isinstance(model, BailingMoeV2_5ForCausalLM) else KVAdapter(model)
