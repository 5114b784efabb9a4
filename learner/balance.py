"""Aux-loss-free MoE balancing in the learner (DeepSeek-V3; the router: kpop.models.layers.moe).

Every router counts the tokens it sends to each expert during the learner's training forwards
(padding excluded). After every optimiser step, `ExpertBalancer.after_step()`:
1. sums each router's counts over the data-parallel ranks (one all-reduce), so every rank applies
   the same update and the routers' biases stay identical across ranks;
2. moves each expert's bias by `rate` * sign(mean load - load) (overloaded experts down,
   underloaded up) and clears the counts; rate 0 only clears them;
3. keeps the load for the metrics.
`metrics()` returns, over the updates since its last call, max / mean tokens per expert of each MoE
layer (`moe_load_max_mean/<layer>`, the layer's index in `model.layers`; 1 = perfectly balanced,
E = every token on one expert) and their mean over layers (`moe_load_max_mean`), then forgets them.
A model without routers (a Llama) has nothing to balance: both calls do nothing, metrics are empty.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_LAYER = re.compile(r"layers\.(\d+)\.")


class ExpertBalancer:
    def __init__(self, model: nn.Module, rate: float) -> None:
        from kpop.models.layers.moe import MoEGate

        self.rate = rate
        self.gates: dict[str, MoEGate] = {}
        for name, module in model.named_modules():
            if isinstance(module, MoEGate):
                # the counts are a non-persistent buffer, so `from_pretrained` leaves it uninitialised
                module.tokens_per_expert.zero_()
                found = _LAYER.search(name)
                self.gates[found.group(1) if found else name] = module
        self._loads: dict[str, torch.Tensor] = {}

    def after_step(self) -> None:
        if not self.gates:
            return
        counts = [gate.tokens_per_expert for gate in self.gates.values()]
        _sum_over_ranks(counts)
        for layer, gate in self.gates.items():
            load = gate.update_expert_bias(self.rate)
            self._loads[layer] = self._loads.get(layer, torch.zeros_like(load)) + load.cpu()

    def metrics(self) -> dict[str, float]:
        ratios = {layer: float(load.max() / load.mean()) for layer, load in self._loads.items() if load.sum() > 0}
        self._loads = {}
        if not ratios:
            return {}
        out = {f"moe_load_max_mean/{layer}": r for layer, r in ratios.items()}
        out["moe_load_max_mean"] = sum(ratios.values()) / len(ratios)
        return out


def _sum_over_ranks(tensors: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
