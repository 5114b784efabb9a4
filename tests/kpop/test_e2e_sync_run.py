"""A short end-to-end run through the real actors: vLLM engine, environment worker, DeepSpeed learner.

The calculator carries the group-level dynamic_length term: the loop applies it to each complete
group before the learner step and logs it as a reward part.
"""

import json
import logging

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

# sft.target_loss=100: every loss is below it, so the cold start stops after its first 10-step window,
# before the 12-step cap (the early stop of a real run).
OVERRIDES = ["sft.steps=12", "sft.target_loss=100", "sft.num_examples=32", "sft.batch_size=8", "train.steps=2", "train.tasks_per_step=2",
             "rollout.group_size=4", "train.eval_tasks=4", "train.checkpoint_every=1", "model.hidden_size=64",
             "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1", "logging.progress=lines",
             "envs.0.rewards=[{type: dynamic_length, alpha: 0.1}]",
             # PPO mini-batches, epochs and fresh RL moments run through real actors too
             "learner.minibatches=2", "learner.epochs=2", "learner.fresh_rl_moments=true",
             # a second cold-start phase whose solver answers from memory (no tool call)
             "sft.anneal.steps=3", "sft.anneal.env_options={calculator: {reference_tool_rate: 0.0}}"]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    from kpop.launch import run

    run_dir = tmp_path_factory.mktemp("e2e")
    spec = load_spec(None, [*OVERRIDES, f"run_dir={run_dir}"])
    records = _LogRecords()
    logger = logging.getLogger("kpop.loop.sync")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        result = run(spec)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return spec, result, records.messages


class _LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def test_run_reports_before_and_after_evaluation(finished_run):
    spec, result, _ = finished_run
    for label in ("before_rl", "after_rl"):
        assert result[label]["episodes"] == 4
        assert 0.0 <= result[label]["reward"] <= 1.0 and 0.0 <= result[label]["sampled_reward"] <= 1.0
    assert json.loads((spec.run_dir / "summary.json").read_text()) == result


def test_metrics_record_every_phase_and_weights_reach_the_engine(finished_run):
    spec, _, _ = finished_run
    records = read_metrics(spec.run_dir)
    sft = [r for r in records if r["phase"] == "sft"]
    assert [r["step"] for r in sft] == list(range(1, 14))                  # 10 + 3 annealing steps
    # the annealing batches are the solver's from-memory answers: no tool call, about half the tokens
    assert max(r["tokens"] for r in sft[10:]) < 0.7 * min(r["tokens"] for r in sft[:10])
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    # one optimiser step per SFT and RL step; the engine serves each new version after the push
    assert [r["version"] for r in rl] == [14, 15]
    assert all(r["episodes"] == 8 and r["gen_tokens"] > 0 for r in rl)
    assert [r["label"] for r in records if r["phase"] == "eval"] == ["before_rl", "after_rl"]


def test_the_group_level_reward_term_is_applied_to_training_groups_and_logged(finished_run):
    spec, _, _ = finished_run
    records = read_metrics(spec.run_dir)
    rl = [r for r in records if r["phase"] == "rl"]
    assert all("reward/shape/dynamic_length" in r and abs(r["reward/shape/dynamic_length"]) <= 0.05 for r in rl)
    # the term needs a group: held-out evaluation (one episode per task) has none
    assert not any("reward/shape/dynamic_length" in r for r in records if r["phase"] == "eval")


def test_checkpoint_is_a_loadable_hugging_face_folder_with_trained_weights(finished_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, _, _ = finished_run
    last = spec.run_dir / "checkpoints" / "last"
    assert last.is_symlink() and (last / "model.safetensors").is_file() and (last / "tokenizer.json").is_file()
    trained = AutoModelForCausalLM.from_pretrained(str(last))
    initial = AutoModelForCausalLM.from_pretrained(str(spec.run_dir / "init"))
    AutoTokenizer.from_pretrained(str(last))
    diffs = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), initial.parameters())]
    assert max(diffs) > 0
    assert json.loads((last / "run_state.json").read_text())["step"] == 2
    assert torch.isfinite(torch.stack([p.abs().sum() for p in trained.parameters()])).all()


def test_a_bfloat16_vllm_engine_adds_the_mismatch_the_learner_measures(finished_run, tmp_path):
    """`rollout.engine.dtype: bfloat16` on the vLLM engine: the same short run logs a train/inference
    mismatch far above the fp32 engine's (the learner trains in fp32), and still trains."""
    from kpop.launch import run

    spec, _, _ = finished_run
    fp32 = [r["mismatch"] for r in read_metrics(spec.run_dir) if r["phase"] == "rl"]
    bf16_spec = load_spec(None, [*OVERRIDES, "rollout.engine.dtype=bfloat16", f"run_dir={tmp_path}"])
    assert bf16_spec.rollout.engine.type == "vllm"
    run(bf16_spec)
    rl = [r for r in read_metrics(bf16_spec.run_dir) if r["phase"] == "rl"]
    assert [r["version"] for r in rl] == [14, 15] and all(r["gen_tokens"] > 0 for r in rl)
    assert min(r["mismatch"] for r in rl) > 1e-3 > 10 * max(fp32), ([r["mismatch"] for r in rl], fp32)


def test_rerun_on_the_run_directory_resumes_after_the_last_checkpoint(finished_run):
    """Runs last in this module: it extends the finished run by one RL step."""
    from kpop.launch import run

    spec, first, _ = finished_run
    at_two = json.loads((spec.run_dir / "checkpoints" / "last" / "run_state.json").read_text())
    result = run(load_spec(None, [*OVERRIDES, f"run_dir={spec.run_dir}", "train.steps=3"]))
    records = read_metrics(spec.run_dir)
    assert [r["step"] for r in records if r["phase"] == "sft"] == list(range(1, 14))    # no second cold start
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3] and [r["version"] for r in rl] == [14, 15, 16]
    state = json.loads((spec.run_dir / "checkpoints" / "last" / "run_state.json").read_text())
    assert state["step"] == 3 and state["sampler_position"] == at_two["sampler_position"] + 2   # the next 2 tasks
    assert result["before_rl"] == first["before_rl"]


def test_run_logs_its_starting_reward_and_explains_a_low_start_after_the_anneal(finished_run):
    spec, result, messages = finished_run
    start = result["before_rl"]["reward"]
    assert any(level == logging.INFO and msg.startswith(f"RL starts from held-out reward greedy {start:.3f}")
               for level, msg in messages)
    # the first phase reached its target, then annealed: a low start is the anneal's, noted, not warned
    assert not any(level == logging.WARNING and "train.min_start_reward" in msg for level, msg in messages)
    noted = any(level == logging.INFO and "after the annealing phase" in msg for level, msg in messages)
    assert noted == (result["before_rl"]["sampled_reward"] < spec.train.min_start_reward)
    assert any("cold start reached its target loss 100 at step 10" in msg for _, msg in messages)
