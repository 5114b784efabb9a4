"""GRPO vs GSPO vs LPO with PPO mini-batches: the same workload, from one cold start, over seeds.

One cold start (`kpop run SPEC --set train.steps=0`: it ends in a checkpoint at RL step 0) is copied
into a run directory per (objective, seed); each copy resumes from that checkpoint with
`learner.objective.type=OBJ`, `learner.minibatches=M` (default 4: the clip only acts when several
optimiser steps share one π_old) and `seed=S` (engine sampling and the RL task stream), so every run
starts from the same weights, optimiser state and held-out reward. Each is a real `kpop run`, one
after another so they do not share the cores. Per run:

    greedy after      held-out greedy reward after RL (before: the cold start's, the same for all)
    sampled after     held-out reward of one sample per task at the training temperature
    clipped           mean over RL steps of clipped_fraction ((token, update) pairs the clip acted on)
    gnorm max/med     largest over median gradient norm of the RL steps (spikes)
    reward std        standard deviation of the training batches' mean reward over the RL steps

    .venv/bin/python benchmarks/objectives.py [--spec examples/quickstart.yaml] [--seeds 0 1 2]
        [--objectives grpo gspo lpo] [--minibatches 4] [--steps 40] [--set KEY=VALUE ...] [--out DIR]

Each objective keeps its own clip range default (GRPO 0.2, GSPO 4e-4, LPO 0.03). Runs go seed by
seed (all objectives of a seed, then the next), and a run already finished in --out is read back
instead of repeated, so an interrupted benchmark picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KPOP = REPO / ".venv" / "bin" / "kpop"


@dataclass(frozen=True)
class Result:
    objective: str
    seed: int
    greedy_before: float
    greedy_after: float
    sampled_after: float
    clipped: float
    gnorm_spike: float
    reward_std: float
    wall_s: float


def kpop_run(spec: Path, run_dir: Path, sets: list[str], log: Path) -> float:
    cmd = [str(KPOP), "run", str(spec)]
    for s in [f"run_dir={run_dir}", "logging.progress=lines", *sets]:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"kpop run failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def summarise(objective: str, seed: int, run_dir: Path, wall: float) -> Result:
    recs = records(run_dir)
    evals = {r["label"]: r for r in recs if r["phase"] == "eval"}
    rl = [r for r in recs if r["phase"] == "rl"]
    norms = [r["grad_norm"] for r in rl if r["grad_norm"] > 0]
    return Result(objective, seed, evals["before_rl"]["reward"], evals["after_rl"]["reward"],
                  evals["after_rl"]["sampled_reward"], statistics.fmean(r["clipped_fraction"] for r in rl),
                  max(norms) / statistics.median(norms) if norms else float("nan"),
                  statistics.pstdev(r["reward"] for r in rl), wall)


def run_objective(args: argparse.Namespace, cold: Path, objective: str, seed: int) -> Result:
    """One RL run from the cold start; a finished run already in --out is read, not repeated
    (unless --fresh), so an interrupted benchmark continues where it stopped."""
    run_dir = args.out / f"{objective}_seed{seed}"
    done = run_dir / "benchmark_wall_s.txt"
    if done.is_file() and not args.fresh:
        return summarise(objective, seed, run_dir, float(done.read_text()))
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(cold, run_dir, symlinks=True)
    sets = [f"seed={seed}", f"train.steps={args.steps}", f"learner.objective.type={objective}",
            f"learner.minibatches={args.minibatches}", *args.overrides]
    wall = kpop_run(args.spec, run_dir, sets, run_dir.with_suffix(".log"))
    done.write_text(f"{wall:.1f}")
    return summarise(objective, seed, run_dir, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="+", default=["grpo", "gspo", "lpo"])
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="RL steps per run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "objectives")
    parser.add_argument("--fresh", action="store_true", help="redo the cold start and every run already in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cold = args.out / "cold_start"
    if args.fresh or not (cold / "summary.json").is_file():
        shutil.rmtree(cold, ignore_errors=True)
        wall = kpop_run(args.spec, cold, ["train.steps=0", *args.overrides], args.out / "cold_start.log")
        print(f"cold start: {wall:.0f} s, checkpoint {cold / 'checkpoints' / 'last'}", flush=True)
    print(f"{'objective':>9} {'seed':>4} {'greedy before':>13} {'greedy after':>12} {'sampled after':>13} "
          f"{'clipped':>8} {'gnorm max/med':>13} {'reward std':>10} {'wall s':>7}", flush=True)
    results = []
    for seed in args.seeds:
        for objective in args.objectives:
            r = run_objective(args, cold, objective, seed)
            results.append(r)
            print(f"{r.objective:>9} {r.seed:>4} {r.greedy_before:>13.3f} {r.greedy_after:>12.3f} "
                  f"{r.sampled_after:>13.3f} {r.clipped:>8.4f} {r.gnorm_spike:>13.2f} {r.reward_std:>10.3f} "
                  f"{r.wall_s:>7.0f}", flush=True)
    for objective in args.objectives:
        mine = [r for r in results if r.objective == objective]
        print(f"{objective}: mean greedy after {statistics.fmean(r.greedy_after for r in mine):.3f}, "
              f"mean clipped {statistics.fmean(r.clipped for r in mine):.4f}, "
              f"worst gnorm max/med {max(r.gnorm_spike for r in mine):.2f}")


if __name__ == "__main__":
    main()
