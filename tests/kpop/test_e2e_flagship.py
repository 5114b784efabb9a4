"""`kpop run examples/flagship.yaml`, shortened to a few steps with every part on, through the real
actors: the KPop scheduler with the DPR curriculum over every family, the built-in engine chosen
automatically for the hybrid MoE model on CPU, the DeepSpeed learner with UFP4 GEMMs and LPO over
mini-batches under the KPop mask, the dynamic length reward, a distillation and a preference
round, coding in the bubblewrap sandbox, and the checkpoint served by `kpop serve`.

What must hold is that every part actually ran, read from the run's own records: tokens trained
stale (the scheduler overlapped), 4-bit GEMMs counted, LPO's clip acted, both rounds logged, every
family trained, sandbox executions counted, the DPR curriculum tracked tasks, the length term
applied, and the served checkpoint answers the official `openai` client.
"""

from __future__ import annotations

import json

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

EXAMPLE = "examples/flagship.yaml"
FAMILIES = ("calculator", "coding", "search", "tool_use", "workflow", "instructions")
SHORT = ["sft.steps=4", "sft.target_loss=0", "sft.num_examples=48", "sft.batch_size=8",
         "train.steps=4", "train.tasks_per_step=6", "rollout.group_size=4", "train.eval_tasks=6",
         "learner.distill.every=4", "learner.distill.tasks=6", "learner.distill.steps=1",
         "learner.preference.every=4", "learner.preference.tasks=4", "learner.preference.steps=1",
         "rollout.sampling.max_new_tokens=48", "logging.progress=lines", "cluster.start_timeout_s=900",
         "model.max_position_embeddings=640", "sft.anneal.steps=2"]


@pytest.fixture(scope="module")
def flagship_run(ray_session, tmp_path_factory):
    from kpop.launch import run

    spec = load_spec(EXAMPLE, [*SHORT, f"run_dir={tmp_path_factory.mktemp('flagship')}"])
    return spec, run(spec)


@pytest.mark.slow
def test_every_part_of_the_design_card_ran(flagship_run):
    spec, _ = flagship_run
    records = read_metrics(spec.run_dir)
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3, 4]
    assert max(r["staleness_max"] for r in rl) > 0, "the scheduler never overlapped generation and training"
    assert all(r["staleness_max"] <= spec.scheduler.max_staleness for r in rl)
    assert all(r["quant_gemms"] > 0 for r in rl) and all(r["quant_gemms"] > 0 for r in records if r["phase"] == "sft")
    assert max(r["clipped_fraction"] for r in rl) > 0, "LPO's clip never acted"
    assert [r["phase"] for r in records if r["phase"] in ("distill", "preference")] == ["distill", "preference"]
    trained = {f: sum(r.get(f"episodes/{f}", 0) for r in rl) for f in FAMILIES}
    assert all(n > 0 for n in trained.values()), trained
    assert sum(r["sandbox_runs"] for r in rl) > 0, "no sandbox execution was counted"
    assert any("reward/shape/dynamic_length" in r for r in rl)
    assert rl[-1]["dpr_tasks"] > 0
    assert all("moe_load_max_mean" in r for r in rl)
    for r in (r for r in records if r["phase"] == "sft"):     # the mixed cold start's per-family losses
        fams = {k.removeprefix("loss/") for k in r if k.startswith("loss/")}
        assert fams and fams <= set(FAMILIES), r
    # the hybrid's context override reaches the model the run trained and saved
    config = json.loads((spec.run_dir / "checkpoints" / "last" / "config.json").read_text())
    assert config["max_position_embeddings"] == 640


@pytest.mark.slow
def test_the_flagship_checkpoint_answers_the_openai_client(flagship_run, ask_checkpoint):
    spec, _ = flagship_run
    model, reply = ask_checkpoint(spec.run_dir / "checkpoints" / "last", max_tokens=8)
    assert model.model_extra["backend"] == "builtin" and reply.usage.completion_tokens >= 1
