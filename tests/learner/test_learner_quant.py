"""FP4 training in the learner on both model types: with `learner.quant.recipe` set, exactly the
layers the run's recorded plan lists are FP4 layers, and every SFT and RL step quantises exactly the
recipe's GEMMs and operands in them (traced through kpop.quant.gemm.trace), no more, no fewer; the
step's metrics count the same GEMMs, and a step without a recipe reports none."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from kpop.spec import load_spec
from kpop.trajectory import Trajectory


def rows(n: int, seed: int, rewards: list[float] | None = None) -> list[Trajectory]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = 20 - (i % 3) * 3
        ids = torch.randint(4, 100, (size,), generator=gen).tolist()
        lps = [0.0] * 4 + [-1.0] * (size - 4)
        out.append(Trajectory(str(i), "e", ids, [0] * 4 + [1] * (size - 4), lps, [-1] * 4 + [0] * (size - 4),
                              reward=rewards[i] if rewards else 0.0, group_id=f"g{i // 4}"))
    return out


@pytest.mark.parametrize("recipe", ["ufp4", "mxfp4"])
@pytest.mark.parametrize("model", ["llama", "hybrid"])
def test_sft_and_rl_steps_quantise_exactly_the_recipes_gemms(model, recipe, learner_model_dir, learner_hybrid_dir):
    from kpop.learner.learner import Learner
    from kpop.quant.apply import recipe_from_spec
    from kpop.quant.gemm import trace
    from kpop.quant.linear import FP4Linear
    from kpop.runtime.quant_plan import quant_plan

    model_dir = learner_model_dir if model == "llama" else learner_hybrid_dir
    # the 2-layer Llama keeps only its last block, the 4-layer hybrid its first and last (the default)
    keep_first = 0 if model == "llama" else 1
    spec = load_spec(None, [f"model.type={model}", f"learner.quant.recipe={recipe}", "learner.micro_batch_size=8",
                            f"learner.quant.keep_first_blocks={keep_first}"])
    plan = quant_plan(spec, model_dir)
    learn = Learner(str(model_dir), spec.learner, seed=0, num_threads=1)
    module = learn.engine.module
    fp4 = {name for name, m in module.named_modules() if isinstance(m, FP4Linear)}
    plain = {name for name, m in module.named_modules() if type(m) is nn.Linear}
    assert fp4 == set(plan["quantised"]) and plain == set(plan["kept"]) and fp4
    middle = "model.layers.0." if model == "llama" else "model.layers.1."
    assert "lm_head" in plain and not any(n.startswith(middle) for n in plain)
    calls = Counter()
    for name in fp4:
        module.get_submodule(name).register_forward_hook(lambda *_, name=name: calls.update([name]))
    rec = recipe_from_spec(spec.learner.quant)
    for mode, batch in (("sft", rows(8, 0)), ("rl", rows(8, 1, [0.0, 1.0, 0.5, 1.0] * 2))):
        calls.clear()
        with trace() as events:
            m = learn.train_step(batch, mode)
        assert m.tokens > 0 and calls
        forwards = sum(calls.values())
        seen = Counter((e.gemm, e.role) for e in events)
        # every FP4 layer call runs its three GEMMs, each with both operands quantised as listed
        assert seen == {(g, r): forwards for g in ("fprop", "dgrad", "wgrad") for r in ("lhs", "rhs")}
        # the step's record counts the same GEMMs (quant_gemms: what a run's metrics show)
        assert m.quant == {"quant_gemms": 3 * forwards, **{f"quant_gemms/{g}": forwards for g in ("dgrad", "fprop", "wgrad")}}
        for e in events:
            gemm = rec.gemm(e.gemm)
            assert e.spec == (gemm.lhs if e.role == "lhs" else gemm.rhs) and e.rht == gemm.rht
    # checkpoints keep the high-precision parameters: the FP4 layers hold the nn.Linear weights
    state = module.state_dict()
    assert all(state[f"{name}.weight"].dtype == torch.float32 for name in fp4)


def test_a_step_without_a_recipe_reports_no_quantised_gemms(learner_model_dir):
    from kpop.learner.learner import Learner

    learn = Learner(str(learner_model_dir), load_spec(None, []).learner, seed=0, num_threads=1)
    m = learn.train_step(rows(4, 0), "sft")
    assert m.tokens > 0 and m.quant == {}
