"""Does a preference (DPO) round raise the held-out rubric score? One row per seed.

Each row is one real `kpop run examples/preference.yaml --set seed=N` (a fresh run directory each),
run one at a time so they do not share the cores. The run logs a held-out evaluation just before
its preference round and one just after (labels before_preference / after_preference); a row gives
the mean signed rubric score of the held-out tasks (learner.preference.rubric_weights over their
reward parts) greedy and sampled (one sample per task at the run's temperature), the task reward,
the pairs the round trained on and the run's wall-clock. A distillation round of the same RL step
runs first where the spec has one (`--set 'learner.distill={every: 1, ...}'`): "before" is then the
evaluation after it. The last line counts the seeds whose greedy rubric rose.

    .venv/bin/python benchmarks/preference.py [--seeds 0 1 2] [--spec examples/preference.yaml]
        [--set KEY=VALUE ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from run_example import REPO, run_spec

NAN = float("nan")


@dataclass(frozen=True)
class Row:
    seed: int
    wall_s: float
    ok: bool
    rubric_before: float = NAN
    rubric_after: float = NAN
    sampled_before: float = NAN
    sampled_after: float = NAN
    reward_before: float = NAN
    reward_after: float = NAN
    pairs: int = 0

    @property
    def gain(self) -> float:
        return self.rubric_after - self.rubric_before


def summarize_run(run_dir: Path) -> dict[str, float]:
    """The evaluations around the run's (first) preference round, from its metrics.jsonl: the last
    one logged before the round's first step (before_preference, or after_distill when a
    distillation round of the same RL step ran first) and the first after_preference."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next(i for i, r in enumerate(records) if r["phase"] == "preference")
    before = next(r for r in reversed(records[:first]) if r["phase"] == "eval")
    after = next(r for r in records[first:] if r["phase"] == "eval" and r["label"] == "after_preference")
    return {"rubric_before": before["rubric"], "rubric_after": after["rubric"],
            "sampled_before": before["sampled_rubric"], "sampled_after": after["sampled_rubric"],
            "reward_before": before["reward"], "reward_after": after["reward"],
            "pairs": sum(int(r["pairs"]) for r in records if r["phase"] == "preference")}


def run_one(spec: Path, seed: int, out: Path, overrides: list[str]) -> Row:
    run_dir = out / f"seed{seed}"
    ok, wall = run_spec(spec, seed, run_dir, out / f"seed{seed}.log", overrides)
    return Row(seed, wall, True, **summarize_run(run_dir)) if ok else Row(seed, wall, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "preference.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "preference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'seed':>4} {'rubric before':>13} {'rubric after':>12} {'gain':>7} {'sampled before':>14} "
          f"{'sampled after':>13} {'reward before':>13} {'reward after':>12} {'pairs':>5} {'wall s':>7}", flush=True)
    rows = []
    for seed in args.seeds:
        r = run_one(args.spec, seed, args.out, args.overrides)
        rows.append(r)
        print(f"{r.seed:>4} {r.rubric_before:>13.3f} {r.rubric_after:>12.3f} {r.gain:>+7.3f} {r.sampled_before:>14.3f} "
              f"{r.sampled_after:>13.3f} {r.reward_before:>13.3f} {r.reward_after:>12.3f} {r.pairs:>5} {r.wall_s:>7.1f}",
              flush=True)
    rose = sum(1 for r in rows if r.ok and r.gain > 0)
    print(f"{rose} of {len(rows)} seeds raised the held-out greedy rubric")


if __name__ == "__main__":
    main()
