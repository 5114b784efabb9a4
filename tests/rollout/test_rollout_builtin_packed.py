"""Packed weights (kpop.rollout.builtin.packed): one matmul equals the separate layers, before and
after a weight update copied into the parameters, and after a parameter is given new storage.
The engine-level check: a Llama served by the built-in engine decodes with the new weights after
`update_weights` (reference: argmax decoding by full forward passes of a model holding them)."""

from __future__ import annotations

import asyncio

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kpop.rollout.builtin.packed import fused_linear, packed, stacked
from kpop.rollout.builtin.tiny_models import tiny_llama_dir
from kpop.rollout.builtin.weights import load_model
from kpop.rollout.builtin_engine import BuiltinEngine
from kpop.rollout.engine import GenerationRequest, SamplingParams, WeightUpdate
from kpop.rollout.weight_sync import state_dict_to_chunks


def _layers(bias: bool) -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList([nn.Linear(8, 5, bias=bias), nn.Linear(8, 3, bias=bias), nn.Linear(8, 5, bias=bias)])


@pytest.mark.parametrize("bias", [False, True])
def test_fused_linear_equals_the_separate_layers_and_follows_updates(bias):
    owner = _layers(bias)
    x = torch.randn(4, 8)
    got = fused_linear(owner, "qkv", list(owner), x)
    for out, layer in zip(got, owner):
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
    whole = owner._kpop_packed["qkv.weight"][0]
    assert whole.shape == (13, 8) and owner[1].weight.data_ptr() == whole[5:].data_ptr()
    new = _layers(bias)
    with torch.no_grad():
        for layer in new:
            layer.weight.mul_(-2.0)
        for mine, theirs in zip(owner.parameters(), new.parameters()):
            mine.copy_(theirs)  # what WeightLoader.commit does
    got = fused_linear(owner, "qkv", list(owner), x)
    assert owner._kpop_packed["qkv.weight"][0] is whole  # no rebuild: the update landed in it
    for out, layer in zip(got, new):
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))


def test_a_parameter_given_new_storage_rebuilds_the_pack():
    owner = _layers(False)
    x = torch.randn(2, 8)
    fused_linear(owner, "p", list(owner), x)
    replacement = torch.full((3, 8), 0.5)
    owner[1].weight.data = replacement
    got = fused_linear(owner, "p", list(owner), x)
    torch.testing.assert_close(got[1], x @ replacement.T)
    assert owner[1].weight.data_ptr() != replacement.data_ptr()  # re-pointed into the new pack


def test_mixed_or_custom_layers_are_called_one_by_one():
    owner = nn.ModuleList([nn.Linear(8, 4, bias=True), nn.Linear(8, 4, bias=False)])
    x = torch.randn(3, 8)
    got = fused_linear(owner, "m", list(owner), x)
    torch.testing.assert_close(got[0], owner[0](x))
    torch.testing.assert_close(got[1], owner[1](x))
    assert "_kpop_packed" not in owner.__dict__


def test_stacked_layout_groups_then_stacks():
    owner = nn.Module()
    params = [nn.Parameter(torch.full((2, 3), float(i))) for i in range(4)]
    whole = packed(owner, "s", params, stacked(2))
    assert whole.shape == (2, 4, 3)
    assert whole[1, 2:].eq(3.0).all() and whole[0, :2].eq(0.0).all()
    with torch.no_grad():
        params[2].fill_(7.0)
    assert whole[1, :2].eq(7.0).all()


@torch.no_grad()
def _argmax_decode(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


async def test_llama_engine_decodes_with_updated_weights(tmp_path):
    old_dir, new_dir = tiny_llama_dir(tmp_path / "old", seed=0), tiny_llama_dir(tmp_path / "new", seed=1)
    old, new = load_model(old_dir), load_model(new_dir)
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    greedy = SamplingParams(temperature=0, max_tokens=8)
    engine = BuiltinEngine(old_dir, max_batch=2)
    before = await asyncio.gather(*(engine.generate(GenerationRequest(f"a{i}", p, greedy)) for i, p in enumerate(prompts)))
    await engine.update_weights(WeightUpdate(1, state_dict_to_chunks(dict(new.state_dict()), 64_000)))
    after = await asyncio.gather(*(engine.generate(GenerationRequest(f"b{i}", p, greedy)) for i, p in enumerate(prompts)))
    await engine.close()
    assert [r.token_ids for r in before] == [_argmax_decode(old, p, 8) for p in prompts]
    assert [r.token_ids for r in after] == [_argmax_decode(new, p, 8) for p in prompts] != [r.token_ids for r in before]
