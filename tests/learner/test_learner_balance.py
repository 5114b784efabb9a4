"""Aux-loss-free MoE balancing in the learner (kpop.learner.balance): the load counts real tokens
only, the bias moves by rate * sign(mean - load) after every optimiser step, and over a short run
it lowers the busiest expert's share of the load that the same run without it keeps."""

from __future__ import annotations

import pytest
import torch

from kpop.spec import load_spec
from kpop.trajectory import Trajectory


@pytest.fixture(scope="module")
def hybrid_dir(learner_hybrid_dir):
    return learner_hybrid_dir


def sft_rows(n: int, length: int = 24, seed: int = 0) -> list[Trajectory]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        size = length - (i % 4) * 4       # unequal lengths: the batch is padded
        ids = torch.randint(4, 100, (size,), generator=gen).tolist()
        rows.append(Trajectory("sft", str(i), ids, [0] * 4 + [1] * (size - 4), [0.0] * size, [-1] * 4 + [0] * (size - 4)))
    return rows


def learner(model_dir, rate: float, lr: float = 1e-3):
    from kpop.learner.learner import Learner

    spec = load_spec(None, [f"learner.expert_bias_gamma={rate}", f"learner.lr={lr}", "learner.micro_batch_size=8"]).learner
    return Learner(str(model_dir), spec, seed=0, num_threads=1)


def biases(learn) -> dict[str, torch.Tensor]:
    return {layer: gate.expert_bias.clone() for layer, gate in learn.balancer.gates.items()}


def test_padding_is_routed_but_not_counted(hybrid_dir):
    from kpop.learner.batch import collate

    learn = learner(hybrid_dir, rate=0.0)
    model = learn.engine.module.train()
    rows = sft_rows(4)
    counts = []
    for batch in (collate(rows, 0), *(collate([r], 0) for r in rows)):  # padded together vs one by one
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        counts.append({k: g.tokens_per_expert.clone() for k, g in learn.balancer.gates.items()})
        for g in learn.balancer.gates.values():
            g.tokens_per_expert.zero_()
    together, alone = counts[0], counts[1:]
    real = sum(len(r.token_ids) for r in rows)
    for layer in together:
        assert float(together[layer].sum()) == real * 2             # top-2 routing of the real tokens only
        assert torch.equal(together[layer], sum(c[layer] for c in alone))


def test_each_step_moves_the_biases_by_the_sign_of_the_load_gap(hybrid_dir):
    learn = learner(hybrid_dir, rate=0.01)
    gates = learn.balancer.gates
    assert sorted(gates) == ["1", "2", "3"]                            # layers 1..3 are MoE in the tiny preset
    before = biases(learn)
    loads = {}

    def keep_load(gate, layer):
        original = gate.update_expert_bias

        def update(gamma):
            loads[layer] = gate.tokens_per_expert.clone()
            return original(gamma)
        gate.update_expert_bias = update

    for layer, gate in gates.items():
        keep_load(gate, layer)
    m = learn.train_step(sft_rows(8), "sft")
    after = biases(learn)
    for layer, load in loads.items():                                  # naive reference of the update
        expected = before[layer] + 0.01 * torch.sign(load.mean() - load)
        assert torch.allclose(after[layer], expected) and not torch.equal(after[layer], before[layer])
        assert m.moe_load[f"moe_load_max_mean/{layer}"] == pytest.approx(float(load.max() / load.mean()))
        assert float(gates[layer].tokens_per_expert.sum()) == 0       # counts start over each step
    assert m.moe_load["moe_load_max_mean"] == pytest.approx(
        sum(m.moe_load[f"moe_load_max_mean/{k}"] for k in loads) / len(loads))


def test_a_short_run_with_the_update_is_better_balanced_than_without(hybrid_dir):
    rows = sft_rows(16, seed=1)
    final = {}
    for rate in (0.0, 0.02):
        learn = learner(hybrid_dir, rate)
        history = [learn.train_step(rows, "sft").moe_load["moe_load_max_mean"] for _ in range(25)]
        final[rate] = sum(history[-5:]) / 5
        if rate == 0.0:
            assert all(torch.equal(b, torch.zeros_like(b)) for b in biases(learn).values())
        else:
            assert history[-1] < history[0]
    assert final[0.02] < final[0.0] - 0.1, final
