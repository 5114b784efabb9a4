"""Loading a model folder for the built-in engine, and replacing its weights all-or-nothing.

- `load_model(model_dir, device, dtype)`: `bailing_hybrid` folders go through the hybrid model's
  own strict loader (kpop.models.hybrid.checkpoint); every other architecture through
  transformers' `AutoModelForCausalLM`. The model is returned in eval mode, its tensors of 2 MiB
  and more in huge-page memory (kpop.rollout.builtin.hugepages: a decode step streams them).
- `WeightLoader(model, model_dir)` knows the parameter set of the folder (names, shapes; the
  safetensors headers, as `validate_update` expects) and the model tensor each name lands in
  (parameters and persistent buffers, e.g. MoE expert biases; tied weights share one tensor).
- `stage(chunks)` validates and deserialises an update into tensors of the serving dtype and
  device without touching the model; any problem raises `WeightSyncError`.
- `commit(staged)` copies staged tensors into the model. It only runs on a fully validated stage
  whose every shape matches, so it cannot fail half-way: the model holds either the old or the
  new weights, never a mix.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kpop.rollout.builtin import hugepages
from kpop.rollout.weight_sync import (
    WeightSyncError,
    chunks_to_state_dict,
    expected_params_from_dir,
    validate_update,
)


def load_model(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    model_dir = Path(model_dir)
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type == "bailing_hybrid":
        from kpop.models.hybrid.checkpoint import load_checkpoint

        model = load_checkpoint(model_dir, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model = model.to(device).eval()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = hugepages.place(tensor.data)
    return model


class WeightLoader:
    def __init__(self, model, model_dir: str | Path) -> None:
        self.model = model
        self.expected = expected_params_from_dir(model_dir)
        targets = dict(model.named_parameters(remove_duplicate=False))
        targets.update(model.state_dict(keep_vars=True))
        missing = sorted(set(self.expected) - set(targets))
        if missing:
            raise ValueError(f"{model_dir}: safetensors names not found in the model: {missing[:5]}")
        self.targets = {name: targets[name] for name in self.expected}

    def stage(self, chunks: list[bytes]) -> dict[str, torch.Tensor]:
        validate_update(chunks, self.expected)
        try:
            state = chunks_to_state_dict(chunks)
        except WeightSyncError:
            raise
        except Exception as exc:  # a corrupt safetensors payload, whatever the error type
            raise WeightSyncError(f"weight update chunks could not be read: {exc}") from exc
        staged = {}
        for name, tensor in state.items():
            target = self.targets[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise WeightSyncError(f"parameter {name!r} has shape {list(tensor.shape)}, the model expects {list(target.shape)}")
            if not torch.isfinite(tensor).all():
                raise WeightSyncError(f"parameter {name!r} holds non-finite values")
            staged[name] = tensor.to(device=target.device, dtype=target.dtype)
        return staged

    @torch.no_grad()
    def commit(self, staged: dict[str, torch.Tensor]) -> None:
        for name, tensor in staged.items():
            self.targets[name].copy_(tensor)
