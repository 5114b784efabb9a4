"""An environment worker SIGKILLed in the middle of an episode: replaced, the episode re-run, nothing lost or doubled.

`kpop run` (KPop loop, two environment workers) stops at the fault point
`rollout:<group>:0:turn_1_generated` of one training task (the third RL draw): the worker
that runs sample 0 of that task has its first model turn and has not run the environment step.
The test kills that process alone (the pid the marker names), not the run. The run must replace
the worker, re-run every episode the dead worker held (that one included) and finish: each step
trains exactly its tasks x group size episodes, every drawn task is trained exactly once, the
killed task among them, and the replacement, reaching the same point, goes on (a point fires once).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from kpop.faults import MARKER, read_marker
from kpop.metrics import read_metrics
from kpop.scheduler.state import STATE_FILE
from tests.faults.test_kill_resume import (
    ATTEMPTS,
    RAY_DID_NOT_START,
    assert_one_record_per_step,
    driver_stacks,
    kpop_run,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SFT_STEPS, SFT_DRAWS, STEPS, TASKS, GROUP = 4, 64, 4, 2, 2
TARGET = SFT_DRAWS + TASKS  # the third RL draw: admitted while step 1 runs (eta 1)
ARGS = [f"sft.steps={SFT_STEPS}", f"sft.num_examples={SFT_DRAWS}", "rollout.engine.type=builtin",
        f"train.steps={STEPS}", "rollout.num_env_workers=2", "scheduler.max_retries=3"]
TIMEOUT_S = 900


def wait_for(proc, what, done, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            stacks = driver_stacks(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{what} not reached in {TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}\n"
                        f"where the driver was:\n{stacks}")
        time.sleep(0.002)


def kill_worker_mid_episode(run_dir: Path, fault: str):
    """Start the run, SIGKILL the process that reaches `fault`; returns (run process, marker, log)."""
    marker = run_dir / MARKER
    for _ in range(ATTEMPTS):
        proc, log = kpop_run(run_dir, ARGS, fault)
        wait_for(proc, fault, lambda p=proc: marker.exists() or p.poll() is not None, log)
        if marker.exists():
            reached = read_marker(marker)
            assert "EnvWorker" in Path(f"/proc/{reached.pid}/cmdline").read_text(errors="replace")
            os.kill(reached.pid, signal.SIGKILL)
            return proc, reached, log
        text = log.read_text(errors="replace")
        if RAY_DID_NOT_START not in text:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {fault}:\n{text[-3000:]}")
    pytest.fail(f"Ray did not start in {ATTEMPTS} attempts")


def test_worker_killed_mid_episode_is_replaced_and_its_episodes_rerun(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fault = f"rollout:*:{TARGET}:0:turn_1_generated"
    proc, reached, log = kill_worker_mid_episode(run_dir, fault)
    assert reached.name.endswith(f":{TARGET}:0:turn_1_generated")
    wait_for(proc, "the end of the run", lambda: proc.poll() is not None, log)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    with pytest.raises(ProcessLookupError):
        os.kill(reached.pid, 0)

    rl = [r for r in read_metrics(run_dir) if r["phase"] == "rl"]
    assert all(r["episodes"] == TASKS * GROUP for r in rl)      # whole groups, no sample twice
    assert rl[-1]["worker_restarts"] == 1 and rl[-1]["retried"] >= 1
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    trained = [i for line in ledger for i in line["indices"]]
    state = json.loads((run_dir / "checkpoints" / "last" / STATE_FILE).read_text())
    left = [g["index"] for g in state["ready"] + state["pending"]]
    assert len(trained) == len(set(trained)) and not set(trained) & set(left)   # none twice
    assert sorted(trained + left) == list(range(SFT_DRAWS, state["sampler_position"]))  # none lost
    assert TARGET in trained
    assert_one_record_per_step(run_dir, SFT_STEPS, STEPS)
