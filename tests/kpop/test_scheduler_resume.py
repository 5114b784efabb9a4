"""Kill-and-resume: `kpop run` SIGKILLed mid-run, then rerun on the same directory, accounts for
every task: each draw index is trained exactly once across both processes or is still buffered /
pending in the last checkpoint; the ledger never holds a step the checkpoint does not cover; the
finished turns of episodes running at the checkpoint are all restored for replay (none are past
the bound at eta = 1)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kpop.metrics import read_metrics

# Enough cold start for the tiny model to write tool calls, so episodes take two turns and a kill
# can catch some between their turns (their finished turns are then checkpointed and replayed).
SFT_STEPS, SFT_DRAWS = 60, 256
ARGS = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
        "logging.progress=lines", f"sft.steps={SFT_STEPS}", "sft.target_loss=0", f"sft.num_examples={SFT_DRAWS}", "sft.batch_size=16",
        "train.eval_tasks=2",
        "scheduler.type=kpop", "scheduler.max_staleness=1", "rollout.group_size=2", "train.tasks_per_step=2",
        "train.steps=5", "train.checkpoint_every=1", "cluster.num_cpus=4"]


def kpop_run(run_dir):
    sets = [a for kv in [*ARGS, f"run_dir={run_dir}"] for a in ("--set", kv)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    return subprocess.Popen([sys.executable, "-m", "kpop.cli.main", "run", *sets], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_accounts_for_every_task(tmp_path):
    first = kpop_run(tmp_path)
    ckpt = tmp_path / "checkpoints" / "step_000002" / "scheduler_state.json"
    deadline = time.time() + 600
    while not ckpt.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.is_file(), first.stdout.read().decode()[-3000:]
    time.sleep(1.0)                                    # mid-step 3: rollouts in flight
    os.killpg(first.pid, signal.SIGKILL)               # the run and its Ray instance
    first.wait()
    resumed_from = json.loads((tmp_path / "checkpoints" / "last" / "scheduler_state.json").read_text())
    killed_at = resumed_from["step"]
    assert 2 <= killed_at < 5
    # finished turns of episodes paused by the kill (kept by the checkpoint, replayed on resume)
    paused_turns = sum(len(turns) for g in resumed_from["pending"] for turns in g["partial"].values())

    second = kpop_run(tmp_path)
    out = second.communicate(timeout=900)[0].decode()
    assert second.returncode == 0, out[-3000:]
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [line["step"] for line in ledger] == [1, 2, 3, 4, 5]
    trained = [i for line in ledger for i in line["indices"]]
    state = json.loads((tmp_path / "checkpoints" / "last" / "scheduler_state.json").read_text())
    left = [g["index"] for g in state["ready"] + state["pending"]]
    assert len(trained) == len(set(trained)) == 10 and not set(trained) & set(left)
    assert sorted(trained + left) == list(range(SFT_DRAWS, state["sampler_position"]))
    first_resumed = [r for r in read_metrics(tmp_path) if r["phase"] == "rl" and r["step"] == killed_at + 1][-1]
    assert first_resumed["replayable_turns"] == paused_turns
    # the resumed process did not redo the cold start and continued the step count
    sft = [r for r in read_metrics(tmp_path) if r["phase"] == "sft"]
    assert len(sft) == SFT_STEPS
    assert json.loads((tmp_path / "summary.json").read_text())["rl"]["steps"] == 5
