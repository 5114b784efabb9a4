"""A fresh hybrid model from the spec (preset + overrides), as `kpop run` builds it, and how big a
preset is (the size check `kpop run` makes before building one)."""

from __future__ import annotations

import json

import pytest
import torch

from kpop.spec import load_spec


def test_a_fresh_hybrid_takes_the_preset_the_overrides_and_the_tokenizer(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import kpop.models.hybrid  # noqa: F401 (the Auto classes know bailing_hybrid)
    from kpop.models.hybrid.checkpoint import load_checkpoint
    from kpop.models.hybrid.fresh import build_hybrid

    spec = load_spec(None, ["model.type=hybrid", "model.num_layers=8", "model.num_experts=4", "model.init_std=0.1"]).model
    folder = build_hybrid(spec, tiny_tokenizer, tmp_path / "init", seed=1)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "bailing_hybrid" and cfg["num_hidden_layers"] == 8 and cfg["num_experts"] == 4
    assert cfg["vocab_size"] == len(tiny_tokenizer) and cfg["eos_token_id"] == tiny_tokenizer.eos_token_id
    assert cfg["auto_map"]["AutoConfig"].startswith("configuration_bailing_moe_v2_5.")  # readable without KPop
    assert AutoTokenizer.from_pretrained(str(folder)).chat_template == tiny_tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(folder))            # what the learner loads
    assert type(model).__name__ == "BailingMoeV2_5ForCausalLM"
    mla = [i for i, layer in enumerate(model.model.layers) if layer.is_mla]
    assert mla == [3, 7]                                                 # the tiny preset's M = 4
    weight = model.model.layers[1].mlp.experts[0].gate_proj.weight
    assert 0.09 < float(weight.std()) < 0.11                             # init_std, not HF's 0.02
    same = load_checkpoint(folder)                                       # what the built-in engine loads
    for (name, a), (_, b) in zip(model.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), name


def test_parameter_count_matches_the_built_model_and_sizes_the_published_presets():
    from kpop.models.hybrid import BailingMoeV2_5ForCausalLM
    from kpop.models.hybrid.presets import parameter_count, preset_config

    for overrides in ({}, {"num_nextn_predict_layers": 1, "layer_group_size": 2}, {"tie_word_embeddings": True}):
        cfg = preset_config("tiny", **overrides)
        assert parameter_count(cfg) == sum(p.numel() for p in BailingMoeV2_5ForCausalLM(cfg).parameters())
    assert parameter_count(preset_config("flash")) / 1e9 == pytest.approx(104.2, abs=0.1)
    assert parameter_count(preset_config("1t")) / 1e12 == pytest.approx(1.05, abs=0.01)
