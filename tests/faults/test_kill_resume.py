"""`kpop run` (KPop loop) SIGKILLed at points it is observed to reach, then rerun on the same directory.

- Mid-run: killed once checkpoint 2 is complete and linked (rollouts go on while a checkpoint is saved);
  the resumed run accounts for every task (each draw index trained exactly once across both
  processes, or still buffered / pending in the last checkpoint), replays the finished turns of
  episodes paused by the kill, and does not redo the cold start.
- While a checkpoint is written: a chain of reruns of one run, each killed at another point of
  writing a checkpoint (the learner's weights written but not its optimiser state; the learner's
  state written; every file written but the folder not renamed; the folder renamed but `last` not
  moved; the same step saved again with its older folder moved aside and the new one not renamed);
  each time the checkpoint before is the one the rerun resumes from, and the step saved again
  replaces the complete-but-unlinked folder.
- Both: after the last rerun every step has exactly one metrics record (and one ledger line).

Each kill waits on what the run writes: a checkpoint link, or the marker a fault point writes
before it blocks (kpop.faults; the run stops there until killed, so the point is exact under any
load); never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kpop.faults import DIR_ENV, MARKER, read_marker
from kpop.faults import ENV as FAULT_ENV
from kpop.loop.resume import find_checkpoint
from kpop.metrics import read_metrics
from kpop.scheduler.state import STATE_FILE

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
        "logging.progress=lines", "sft.target_loss=0", "sft.batch_size=16", "train.eval_tasks=2",
        "scheduler.type=kpop", "scheduler.max_staleness=1", "rollout.group_size=2", "train.tasks_per_step=2",
        "train.steps=5", "train.checkpoint_every=1", "cluster.num_cpus=4",
        "cluster.start_timeout_s=900"]  # a shared, loaded test machine can take minutes to place actors


RAY_DID_NOT_START = "The current node timed out during startup"  # Ray's fixed 30 s, on an overloaded machine
ATTEMPTS = 3


def kpop_run(run_dir: Path, args: list[str], fault: str = "") -> tuple[subprocess.Popen, Path]:
    sets = [a for kv in [*TINY, *args, f"run_dir={run_dir}"] for a in ("--set", kv)]
    env = {**os.environ, FAULT_ENV: fault, DIR_ENV: str(run_dir), "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    log = run_dir.parent / f"{run_dir.name}.{len(list(run_dir.parent.glob('*.log')))}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kpop.cli.main", "run", *sets], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def run_until(run_dir: Path, args: list[str], reached, what: str, fault: str = "", timeout_s: float = 900) -> None:
    """Start `kpop run` and SIGKILL it (and its Ray instance) as soon as `reached()` is observed; with
    `reached` None, wait for it to finish with status 0. A run whose local Ray instance did not come
    up (the machine too loaded for Ray's start-up wait) is started again, at most ATTEMPTS times."""
    for _ in range(ATTEMPTS):
        proc, log = kpop_run(run_dir, args, fault)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and not (reached is not None and reached()):
            if time.monotonic() > deadline:
                stacks = driver_stacks(proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"{what} not reached in {timeout_s:g} s:\n{log.read_text(errors='replace')[-3000:]}\n"
                            f"where the driver was:\n{stacks}")
            time.sleep(0.002)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        text = log.read_text(errors="replace")
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what a failed start may have left in the run's group
        except ProcessLookupError:
            pass
        if reached is None and proc.returncode == 0:
            return
        if RAY_DID_NOT_START not in text:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{text[-3000:]}")
    pytest.fail(f"Ray did not start in {ATTEMPTS} attempts")


def driver_stacks(pid: int) -> str:
    """The stuck run's Python stacks (py-spy, installed with the dev tools), for the failure report."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.is_file():
        return "(py-spy not installed)"
    done = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=120, check=False)
    return (done.stdout + done.stderr)[-6000:]


def step_folder(run_dir: Path, step: int, suffix: str = "") -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}{suffix}"


def assert_one_record_per_step(run_dir: Path, sft_steps: int, rl_steps: int) -> None:
    records = read_metrics(run_dir)
    rl = [r["step"] for r in records if r["phase"] == "rl"]
    assert rl == list(range(1, rl_steps + 1))
    assert [r["step"] for r in records if r["phase"] == "sft"] == list(range(1, sft_steps + 1))
    labels = Counter(r["label"] for r in records if r["phase"] == "eval")
    assert labels == {"before_rl": 1, "after_rl": 1}
    ledger = [json.loads(line)["step"] for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert ledger == list(range(1, rl_steps + 1))
    assert json.loads((run_dir / "summary.json").read_text())["rl"]["steps"] == rl_steps


# Enough cold start for the tiny model to write tool calls, so episodes take two turns and a kill
# can catch some between their turns (their finished turns are then checkpointed and replayed).
SFT_STEPS, SFT_DRAWS = 60, 256
MID_STEP = [f"sft.steps={SFT_STEPS}", f"sft.num_examples={SFT_DRAWS}"]  # the default engine, as before


def test_sigkill_mid_run_then_resume_accounts_for_every_task(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_until(run_dir, MID_STEP, (run_dir / MARKER).exists, "checkpoint 2 complete and linked",
              fault="step_000002:linked")
    (run_dir / MARKER).unlink()
    resumed_from = json.loads((run_dir / "checkpoints" / "last" / STATE_FILE).read_text())
    assert resumed_from["step"] == 2
    # finished turns of episodes paused by the kill (kept by the checkpoint, replayed on resume)
    paused_turns = sum(len(turns) for g in resumed_from["pending"] for turns in g["partial"].values())

    run_until(run_dir, MID_STEP, None, "the end of the resumed run")
    trained = [i for line in (run_dir / "ledger.jsonl").read_text().splitlines() for i in json.loads(line)["indices"]]
    state = json.loads((run_dir / "checkpoints" / "last" / STATE_FILE).read_text())
    left = [g["index"] for g in state["ready"] + state["pending"]]
    assert len(trained) == len(set(trained)) == 10 and not set(trained) & set(left)
    assert sorted(trained + left) == list(range(SFT_DRAWS, state["sampler_position"]))
    first_resumed = [r for r in read_metrics(run_dir) if r["phase"] == "rl" and r["step"] == 3]
    assert first_resumed[0]["replayable_turns"] == paused_turns
    assert_one_record_per_step(run_dir, SFT_STEPS, 5)


CKPT_SFT = 4
KILL_POINTS = [  # (step whose checkpoint is being written, fault point, where its marker appears)
    (2, "weights_written", "step_000002.partial"),   # inside the learner: optimiser state not written
    (3, "learner_saved", "."),                       # learner state written, run state not
    (4, "files_written", "."),                       # complete, not renamed
    (5, "renamed", "."),                             # renamed to step_000005, `last` not moved
    (5, "set_aside", "."),                           # step 5 saved again: the older step_000005 moved aside
]


def test_sigkill_while_checkpoints_are_written_resumes_from_the_one_before(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = [f"sft.steps={CKPT_SFT}", "sft.num_examples=64", "rollout.engine.type=builtin"]  # any engine: the quickest
    for step, point, where in KILL_POINTS:
        marker = run_dir / "checkpoints" / where / MARKER if where != "." else run_dir / MARKER
        run_until(run_dir, args, marker.exists, f"checkpoint {step}: {point}", fault=f"step_{step:06d}:{point}")
        assert read_marker(marker).name == f"step_{step:06d}:{point}"
        marker.unlink()
        partial = step_folder(run_dir, step, ".partial")
        if point == "renamed":
            assert (step_folder(run_dir, step) / STATE_FILE).is_file() and not partial.exists()
        elif point == "set_aside":  # both copies complete, neither named step_000005, `last` on step 4
            assert not step_folder(run_dir, step).exists() and (partial / STATE_FILE).is_file()
            assert (step_folder(run_dir, step, ".old") / STATE_FILE).is_file()
        else:
            assert partial.is_dir() and not step_folder(run_dir, step).exists()
            assert (partial / STATE_FILE).is_file() == (point == "files_written")  # complete yet not used
        assert find_checkpoint(run_dir) == step_folder(run_dir, step - 1), point
        assert (run_dir / "checkpoints" / "last").resolve() == step_folder(run_dir, step - 1)
    run_until(run_dir, args, None, "the end of the last rerun")
    assert find_checkpoint(run_dir) == step_folder(run_dir, 5)
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.suffix in (".partial", ".old")]
    assert not leftovers
    assert_one_record_per_step(run_dir, CKPT_SFT, 5)
