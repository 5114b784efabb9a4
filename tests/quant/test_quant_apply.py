"""`quant.apply` and the `learner.quant` spec: which layers are swapped, which stay high precision."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from kpop.quant import apply, apply_spec, make_recipe
from kpop.quant.linear import FP4Linear
from kpop.spec.learner import LearnerSpec, QuantSpec


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class TinyLM(nn.Module):
    def __init__(self, d: int = 32, n: int = 4, vocab: int = 50):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj_in = nn.Linear(d, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        h = self.proj_in(self.embed(tokens))
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


def _fp4_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, FP4Linear))


def test_apply_keeps_first_last_blocks_and_lm_head():
    model = TinyLM()
    params_before = {n: p for n, p in model.named_parameters()}
    report = apply(model, make_recipe("ufp4"))
    expected = ["layers.1.down", "layers.1.up", "layers.2.down", "layers.2.up", "proj_in"]
    assert _fp4_names(model) == expected == sorted(report.quantised)
    assert sorted(report.kept) == ["layers.0.down", "layers.0.up", "layers.3.down", "layers.3.up", "lm_head"]
    # the very same Parameter objects: optimiser state and state_dict keys survive
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert model.layers[1].up.recipe.name == "ufp4"


def test_apply_settings_and_training_step():
    model = TinyLM()
    apply(model, make_recipe("nvfp4", first_blocks=0, last_blocks=2, keep_lm_head=False))
    assert _fp4_names(model) == ["layers.0.down", "layers.0.up", "layers.1.down", "layers.1.up", "lm_head", "proj_in"]
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_recipe_replaces_nothing():
    model = TinyLM()
    report = apply(model, make_recipe("bf16"))
    assert _fp4_names(model) == [] and report.quantised == []


def test_learner_quant_spec_defaults_validation_and_apply():
    assert LearnerSpec().quant.recipe == "bf16"
    spec = LearnerSpec(quant={"recipe": "ufp4", "keep_first_blocks": 2, "keep_last_blocks": 0})
    with pytest.raises(ValidationError):
        QuantSpec(recipe="fp8")
    with pytest.raises(ValidationError):
        QuantSpec(recipe="ufp4", unknown_key=1)
    model = TinyLM()
    report = apply_spec(model, spec.quant)
    assert report.recipe == "ufp4"
    assert _fp4_names(model) == ["layers.2.down", "layers.2.up", "layers.3.down", "layers.3.up", "proj_in"]
    assert model.layers[2].up.recipe.fprop.rht == 16
    model2 = TinyLM()
    apply_spec(model2, QuantSpec(recipe="ufp4", rht_size=128))
    assert model2.layers[1].up.recipe.wgrad.rht == 128
