"""Presets and the `model: {type: hybrid}` spec variant."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from kpop.models.hybrid.presets import config_from_spec, preset_config
from kpop.spec.model import HybridModelSpec, ModelSpec


def test_published_sizes():
    flash, big = preset_config("flash"), preset_config("1t")
    assert (flash.num_hidden_layers, flash.hidden_size, flash.num_attention_heads, flash.head_dim) == (32, 4096, 32, 128)
    assert (big.num_hidden_layers, big.hidden_size, big.num_attention_heads, big.head_dim) == (80, 8192, 64, 128)
    for cfg in (flash, big):
        assert cfg.vocab_size == 157184 and cfg.rope_theta == 6e6 and cfg.rms_norm_eps == 1e-6
        assert cfg.layer_group_size == 8 and cfg.routed_scaling_factor == 2.5 and cfg.n_group == 8 and cfg.topk_group == 4
        assert cfg.num_hidden_layers % cfg.layer_group_size == 0
        assert int(cfg.head_dim * cfg.partial_rotary_factor) == cfg.qk_rope_head_dim == 64
    with pytest.raises(KeyError):
        preset_config("huge")


def test_spec_variant_builds_config():
    spec = TypeAdapter(ModelSpec).validate_python({"type": "hybrid", "preset": "tiny", "num_layers": 8, "layer_group_size": 4})
    assert isinstance(spec, HybridModelSpec)
    cfg = config_from_spec(spec)
    assert cfg.num_hidden_layers == 8 and [i for i in range(8) if cfg.is_mla_layer(i)] == [3, 7]
    assert TypeAdapter(ModelSpec).validate_python({}).type == "llama"  # Llama stays the default
    with pytest.raises(ValidationError):
        TypeAdapter(ModelSpec).validate_python({"type": "hybrid", "num_layers": 0})
