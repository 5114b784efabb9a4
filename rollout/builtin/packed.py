"""Packed weights: several parameters' values held in one tensor that the parameters are views of.

`packed(owner, key, params, layout)` returns one tensor with the values of `params`, arranged by
`layout` (`rows`: concatenated along dim 0; `stacked(n)`: each n consecutive parameters concatenated
along dim 0, the groups stacked on a new dim 0, e.g. MoE experts' gate|up as [E, 2I, h]). At first
use every parameter is re-pointed into it (same values, same Parameter objects), so a weight update
that copies into the parameters (kpop.rollout.builtin.weights.WeightLoader.commit) lands in the
packed tensor too, and one matmul over it computes what the separate ones compute. The tensor is
cached on `owner` under `key` with the parameters' data pointers; a parameter given other storage
since (`model.to(...)`, `load_state_dict(assign=True)`) makes it rebuilt from the current values.

`fused_linear(owner, key, linears, x)` is the outputs of several bias-compatible `nn.Linear` layers
reading the same input, by one `project` (kpop.rollout.builtin.matmul) over their packed weights (and
biases): a decode step then streams the weights in one call instead of one per layer. Layers that
are not plain `nn.Linear` (or mix biased and bias-free ones) are simply called one by one.
`fused_output` is the same outputs side by side in one tensor (out features in the layers' order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from kpop.rollout.builtin import hugepages
from kpop.rollout.builtin.matmul import project

Layout = Callable[[list[torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]]


def rows(values: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    whole = torch.cat(values)
    return whole, list(whole.split([v.shape[0] for v in values]))


def stacked(n: int) -> Layout:
    def layout(values: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        groups = [values[i : i + n] for i in range(0, len(values), n)]
        whole = torch.stack([torch.cat(group) for group in groups])
        return whole, [v for g, group in zip(whole, groups) for v in g.split([p.shape[0] for p in group])]

    return layout


def packed(owner: object, key: str, params: Sequence[torch.Tensor], layout: Layout) -> torch.Tensor:
    cache: dict = owner.__dict__.setdefault("_kpop_packed", {})
    hit = cache.get(key)
    if hit is not None and hit[1] == [p.data_ptr() for p in params]:
        return hit[0]
    # Built outside inference mode: an inference tensor could not take the later in-place updates.
    with torch.inference_mode(False), torch.no_grad():
        whole, views = layout([p.detach() for p in params])
        placed = hugepages.place(whole)
        views = [placed.as_strided(v.shape, v.stride(), placed.storage_offset() + v.storage_offset() - whole.storage_offset())
                 for v in views]
        for p, view in zip(params, views, strict=True):
            p.data = view
    cache[key] = (placed, [p.data_ptr() for p in params])
    return placed


def fused_output(owner: object, key: str, linears: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The layers' outputs concatenated on the last dim, by one matmul where they are plain."""
    if not _plain(linears):
        return torch.cat([lin(x) for lin in linears], -1)
    params = [lin.weight for lin in linears]
    weight = packed(owner, key + ".weight", params, rows)
    bias = None if linears[0].bias is None else packed(owner, key + ".bias", [lin.bias for lin in linears], rows)
    return project(x, weight, bias, owner, key, params)


def fused_linear(owner: object, key: str, linears: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    if not _plain(linears):
        return [lin(x) for lin in linears]
    return list(fused_output(owner, key, linears, x).split([lin.out_features for lin in linears], -1))


def _plain(linears: Sequence[nn.Module]) -> bool:
    """Plain `nn.Linear` layers, all with a bias or all without: one matmul can stand in for them."""
    return all(type(lin) is nn.Linear for lin in linears) and len({lin.bias is None for lin in linears}) == 1
