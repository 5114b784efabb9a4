"""WSM (Warmup-Stable and Merge): emulate learning-rate decay by merging constant-LR checkpoints.

Given checkpoints θ_1 .. θ_N of a warmup-stable run (oldest first), the merged model is

    θ_merged = Σ_i c_i · θ_i ,   c_i >= 0,  Σ_i c_i = 1

over the last `window` checkpoints (the paper: the merge *window* matters more than the
interval or count). Weightings over the window (i = 1 oldest .. n newest):
- "uniform":     c_i = 1/n                      (simple moving average)
- "linear":      c_i ∝ i                        (newer checkpoints weigh more)
- "exponential": c_i ∝ γ^(n-i)                  (EMA-like, γ in (0, 1])
Arithmetic is in float64, the result is cast back to each tensor's dtype. Non-floating tensors
(buffers like position ids) must agree across checkpoints and are copied. The output is a Hugging
Face folder: merged model.safetensors, plus config and tokenizer files of the newest checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

Weighting = Literal["uniform", "linear", "exponential"]
_COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "chat_template.jinja")


def merge_coefficients(n: int, weighting: Weighting = "uniform", gamma: float = 0.5) -> list[float]:
    if n < 1:
        raise ValueError("need at least one checkpoint to merge")
    if weighting == "uniform":
        raw = [1.0] * n
    elif weighting == "linear":
        raw = [float(i + 1) for i in range(n)]
    elif weighting == "exponential":
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        raw = [gamma ** (n - 1 - i) for i in range(n)]
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    total = sum(raw)
    return [r / total for r in raw]


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def merge_state_dicts(states: Sequence[dict[str, torch.Tensor]], coefficients: Sequence[float]) -> dict[str, torch.Tensor]:
    names = set(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != names:
            raise ValueError(f"checkpoint {i} has different tensors: {sorted(names ^ set(s))[:5]}")
    merged = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            if any(not torch.equal(s[name], first) for s in states[1:]):
                raise ValueError(f"non-floating tensor {name!r} differs across checkpoints")
            merged[name] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for s, c in zip(states, coefficients):
            acc += c * s[name].to(torch.float64)
        merged[name] = acc.to(first.dtype).contiguous()
    return merged


def wsm_merge(folders: Sequence[str | Path], out: str | Path, window: int | None = None,
              weighting: Weighting = "uniform", gamma: float = 0.5) -> Path:
    """Merge the last `window` of `folders` (oldest first) into the HF folder `out`."""
    from safetensors.torch import save_file

    chosen = [Path(f) for f in folders][-(window or len(folders)):]
    coeffs = merge_coefficients(len(chosen), weighting, gamma)
    merged = merge_state_dicts([load_weights(f) for f in chosen], coeffs)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(target / "model.safetensors"), metadata={"format": "pt"})
    for name in _COPIED:
        if (chosen[-1] / name).is_file():
            shutil.copy2(chosen[-1] / name, target / name)
    return target
