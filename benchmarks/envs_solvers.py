"""Reference-solver and random-policy scores of the environment families on N seeded tasks.

Usage: python benchmarks/envs_solvers.py [--tasks 200] [--envs coding,search,tool_use,workflow] [--json]

For each environment it plays seeds 0..N-1 once with the reference solver and once with the
seeded random policy (kpop.envs.random_policy), episodes running concurrently (the coding family's
verification runs in the sandbox pool), and prints the mean reward of each, the fraction of
reference episodes that reached reward 1.0, and the wall time. The figures in the note come from here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

FAMILIES = ["coding", "search", "tool_use", "workflow"]


async def score(name: str, tasks: int, policy_kind: str, concurrency: int = 16) -> tuple[float, float]:
    from kpop.envs.random_policy import RandomPolicy
    from kpop.envs.registry import make_env
    from kpop.envs.solver import reference_policy, run_episode

    gate = asyncio.Semaphore(concurrency)

    async def one(seed: int) -> float:
        async with gate:
            policy = reference_policy if policy_kind == "reference" else RandomPolicy(seed)
            return (await run_episode(make_env(name), seed, policy)).reward

    rewards = await asyncio.gather(*(one(s) for s in range(tasks)))
    return sum(rewards) / tasks, sum(r >= 1.0 for r in rewards) / tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--envs", default=",".join(FAMILIES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.envs.split(","):
        start = time.perf_counter()
        ref, solved = asyncio.run(score(name, args.tasks, "reference"))
        rnd, _ = asyncio.run(score(name, args.tasks, "random"))
        rows.append({"env": name, "tasks": args.tasks, "reference": round(ref, 4), "reference_solved": round(solved, 4), "random": round(rnd, 4), "seconds": round(time.perf_counter() - start, 1)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'env':<10} {'tasks':>5} {'reference':>9} {'solved':>7} {'random':>7} {'seconds':>7}")
    for r in rows:
        print(f"{r['env']:<10} {r['tasks']:>5} {r['reference']:>9.4f} {r['reference_solved']:>7.3f} {r['random']:>7.4f} {r['seconds']:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
