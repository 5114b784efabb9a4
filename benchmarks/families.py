"""Agentic RL on every family: each family's example trained from a cold start, one after another.

Each row is one real `kpop run examples/<family>.yaml --set seed=N` (the README's command, a fresh
run directory each), run one at a time so they do not share the cores. A row gives the family, the
seed, held-out reward greedy and sampled (the run's temperature, one sample per task) before and
after RL, the gain in greedy reward, the run's wall-clock (set-up included), the RL steps' mean
wall-clock, their generation throughput (generated tokens per second of generation time) and the
generated tokens per episode. The last line counts the rows whose greedy held-out reward rose by
at least `--min-gain` (0.1, issue 21's bar).

    .venv/bin/python benchmarks/families.py [--families search coding ...] [--seeds 0 1]
        [--set KEY=VALUE ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from run_example import REPO, run_spec

EXAMPLES = {"calculator": "quickstart.yaml", "coding": "coding.yaml", "search": "search.yaml",
            "tool_use": "tool_use.yaml", "workflow": "workflow.yaml", "instructions": "instructions.yaml",
            "plugin": "plugin.yaml"}
NAN = float("nan")


@dataclass(frozen=True)
class Row:
    family: str
    seed: int
    wall_s: float
    ok: bool
    greedy_before: float = NAN
    greedy_after: float = NAN
    sampled_before: float = NAN
    sampled_after: float = NAN
    step_s: float = NAN
    gen_tokens_per_s: float = NAN
    tokens_per_episode: float = NAN

    @property
    def gain(self) -> float:
        return self.greedy_after - self.greedy_before


def summarize_run(run_dir: Path) -> dict[str, float]:
    """Held-out rewards before and after RL and the RL steps' speed, from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["label"]: r for r in records if r["phase"] == "eval"}
    rl = [r for r in records if r["phase"] == "rl"]
    tokens = sum(r["gen_tokens"] * r["episodes"] for r in rl)
    gen_s = sum(r["gen_s"] for r in rl)
    return {"greedy_before": evals["before_rl"]["reward"], "greedy_after": evals["after_rl"]["reward"],
            "sampled_before": evals["before_rl"]["sampled_reward"], "sampled_after": evals["after_rl"]["sampled_reward"],
            "step_s": sum(r["step_s"] for r in rl) / max(len(rl), 1),
            "gen_tokens_per_s": tokens / gen_s if gen_s else NAN,
            "tokens_per_episode": tokens / max(sum(r["episodes"] for r in rl), 1)}


def run_one(family: str, seed: int, out: Path, overrides: list[str]) -> Row:
    run_dir = out / f"{family}_seed{seed}"
    ok, wall = run_spec(REPO / "examples" / EXAMPLES[family], seed, run_dir, out / f"{family}_seed{seed}.log", overrides)
    return Row(family, seed, wall, True, **summarize_run(run_dir)) if ok else Row(family, seed, wall, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--min-gain", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "families")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'family':<12} {'seed':>4} {'greedy before':>13} {'greedy after':>12} {'gain':>6} {'sampled before':>14} "
          f"{'sampled after':>13} {'wall s':>7} {'step s':>6} {'gen tok/s':>9} {'tok/episode':>11}", flush=True)
    rows = []
    for family in args.families:
        for seed in args.seeds:
            r = run_one(family, seed, args.out, args.overrides)
            rows.append(r)
            print(f"{r.family:<12} {r.seed:>4} {r.greedy_before:>13.3f} {r.greedy_after:>12.3f} {r.gain:>+6.3f} "
                  f"{r.sampled_before:>14.3f} {r.sampled_after:>13.3f} {r.wall_s:>7.1f} {r.step_s:>6.2f} "
                  f"{r.gen_tokens_per_s:>9.1f} {r.tokens_per_episode:>11.1f}", flush=True)
    good = sum(1 for r in rows if r.ok and r.gain >= args.min_gain)
    print(f"{good} of {len(rows)} runs raised held-out greedy reward by at least {args.min_gain:g}")


if __name__ == "__main__":
    main()
