"""Freezing schedule of the migration warm-up phases, for the learner.

  * "linear_warmup": only the Lightning layers' `query_key_value` and QK-norm weights train
    (reference step 2: everything else frozen until the loss recovers).
  * "mla_warmup": only the converted MLA attention parameters train (step 4: unmodified
    parameters frozen, learning rate warmed up, `MLA_WARMUP_LR_STEPS`).
  * "full": everything trains.

`trainable_names(model, phase)` lists the parameter names; `apply_phase(model, phase)` sets
`requires_grad` accordingly and returns that list. The schedule is also written into a migrated
checkpoint as `migration.json` so a learner can apply it without importing this module.
"""

from __future__ import annotations

from torch import nn

PHASES = ("linear_warmup", "mla_warmup", "full")
LINEAR_WARMUP_SUFFIXES = ("attention.query_key_value.weight", "attention.query_key_value.bias",
                          "attention.query_layernorm.weight", "attention.key_layernorm.weight")
MLA_WARMUP_LR_STEPS = 100


def trainable_names(model: nn.Module, phase: str) -> list[str]:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose from {PHASES}")
    config = model.config
    names = []
    for name, _ in model.named_parameters():
        if phase == "full":
            names.append(name)
            continue
        parts = name.split(".")
        if len(parts) < 4 or parts[1] != "layers" or int(parts[2]) >= config.num_hidden_layers:
            continue
        is_mla = config.is_mla_layer(int(parts[2]))
        rest = ".".join(parts[3:])
        if phase == "linear_warmup" and not is_mla and rest in LINEAR_WARMUP_SUFFIXES:
            names.append(name)
        elif phase == "mla_warmup" and is_mla and rest.startswith("attention."):
            names.append(name)
    return names


def apply_phase(model: nn.Module, phase: str) -> list[str]:
    names = set(trainable_names(model, phase))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)


def schedule_description(model: nn.Module) -> dict:
    return {"phases": {p: trainable_names(model, p) for p in PHASES if p != "full"}, "mla_warmup_lr_steps": MLA_WARMUP_LR_STEPS}
