"""The quickstart over several seeds (and learner thread counts): does it learn on every one?

Each row is one real `kpop run examples/quickstart.yaml` (the README's command, a fresh run
directory, every field at the spec's default but `seed` and optionally `learner.threads` and the
scheduler), run one after another so they do not share the cores. A row gives the seed, the
learner threads, the steps of the cold start's first phase and its final loss (mean of its last
10 steps; the annealing steps after it, sft.anneal, are left out), the held-out reward greedy and
sampled (the run's temperature, one sample per task) before and after RL, and the run's
wall-clock (set-up excluded). The last line counts the runs whose greedy held-out reward rose by
at least `--min-gain` (0.15: the quickstart's promise).

    .venv/bin/python benchmarks/quickstart_seeds.py [--seeds 0 1 2 3 4] [--threads default 1]
        [--seed-threads 0:1] [--set KEY=VALUE ...] [--out DIR] [--spec examples/hybrid.yaml]

`--threads default 1` runs every seed with each thread count; `--seed-threads 0:1` adds single
runs (seed:threads) instead, e.g. seed 0 with one learner thread. `--set` passes overrides to every
run (e.g. `--set scheduler.type=kpop`). `--spec` runs another example the same way (the hybrid
model's table in the README: `--spec examples/hybrid.yaml`, and with `--set learner.quant.recipe=ufp4`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "examples" / "quickstart.yaml"


@dataclass(frozen=True)
class Row:
    seed: int
    threads: str
    sft_steps: int
    sft_loss: float
    greedy_before: float
    greedy_after: float
    sampled_before: float
    sampled_after: float
    wall_s: float
    ok: bool

    @property
    def gain(self) -> float:
        return self.greedy_after - self.greedy_before


def read_run(run_dir: Path) -> tuple[int, float, dict, dict]:
    """(first-phase SFT steps, its final loss: mean of its last 10 records, eval before RL, eval after RL)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    anneal = json.loads((run_dir / "spec.json").read_text())["sft"]["anneal"]["steps"]
    sft = [r["loss"] for r in records if r["phase"] == "sft"]
    first = sft[:len(sft) - anneal] if anneal else sft
    evals = {r["label"]: r for r in records if r["phase"] == "eval"}
    last = first[-10:]
    return len(first), (sum(last) / len(last) if last else float("nan")), evals["before_rl"], evals["after_rl"]


def run_one(seed: int, threads: str, out: Path, overrides: list[str], spec: Path = SPEC) -> Row:
    run_dir = out / f"seed{seed}_threads{threads}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"seed={seed}", f"run_dir={run_dir}", "logging.progress=lines", *overrides]
    if threads != "default":
        sets.append(f"learner.threads={threads}")
    cmd = [str(REPO / ".venv" / "bin" / "kpop"), "run", str(spec)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(out / f"seed{seed}_threads{threads}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"seed {seed} threads {threads}: kpop run failed (exit {proc.returncode}); see {log.name}", file=sys.stderr)
        return Row(seed, threads, 0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), wall, False)
    steps, loss, before, after = read_run(run_dir)
    return Row(seed, threads, steps, loss, before["reward"], after["reward"], before["sampled_reward"],
               after["sampled_reward"], wall, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", nargs="+", default=["default"], help="learner.threads values ('default' = unset)")
    parser.add_argument("--seed-threads", nargs="*", default=[], metavar="SEED:THREADS", help="extra single runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--min-gain", type=float, default=0.15)
    parser.add_argument("--spec", type=Path, default=SPEC, help="the run spec (default: the quickstart)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart_seeds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = [(s, t) for t in args.threads for s in args.seeds]
    plan += [(int(item.split(":")[0]), item.split(":")[1]) for item in args.seed_threads]
    header = (f"{'seed':>4} {'threads':>7} {'sft steps':>9} {'sft loss':>8} {'greedy before':>13} {'greedy after':>12} {'gain':>6} "
              f"{'sampled before':>14} {'sampled after':>13} {'wall s':>7}")
    print(header, flush=True)
    rows = []
    for seed, threads in plan:
        row = run_one(seed, threads, args.out, args.overrides, args.spec)
        rows.append(row)
        print(f"{row.seed:>4} {row.threads:>7} {row.sft_steps:>9} {row.sft_loss:>8.4f} {row.greedy_before:>13.3f} {row.greedy_after:>12.3f} "
              f"{row.gain:>+6.3f} {row.sampled_before:>14.3f} {row.sampled_after:>13.3f} {row.wall_s:>7.1f}", flush=True)
    good = sum(1 for r in rows if r.ok and r.gain >= args.min_gain and r.sampled_after > r.sampled_before)
    print(f"{good} of {len(rows)} runs raised held-out greedy reward by at least {args.min_gain:g} "
          f"(and sampled reward rose)")


if __name__ == "__main__":
    main()
