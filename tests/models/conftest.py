"""Fixtures of the models tests: a tiny hybrid config (MLA + Lightning layers, dense + MoE FFNs)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_config():
    from kpop.models.hybrid.presets import preset_config

    return preset_config("tiny", num_hidden_layers=4, layer_group_size=2, num_nextn_predict_layers=1)


@pytest.fixture
def tiny_model(tiny_config):
    from kpop.models.hybrid import BailingMoeV2_5ForCausalLM

    torch.manual_seed(0)
    model = BailingMoeV2_5ForCausalLM(tiny_config).eval()
    with torch.no_grad():  # non-trivial norms and biases so that mistakes in them show
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
        for module in model.modules():
            if hasattr(module, "expert_bias"):
                module.expert_bias.normal_(0, 0.05)
    return model
