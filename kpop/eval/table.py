"""Plain-text table of an EvalResult (one row per environment, then "all")."""

from __future__ import annotations

from kpop.eval.runner import EvalResult


def format_table(result: EvalResult) -> str:
    ks = sorted({k for row in result.rows for k in row.pass_at})
    head = ["env", "tasks", "greedy reward", "greedy pass", "greedy tokens", "sampled reward", *(f"pass@{k}" for k in ks)]
    body = [[row.env, str(row.tasks), f"{row.greedy_reward:.3f}", f"{row.greedy_pass:.3f}", f"{row.greedy_gen_tokens:.2f}",
             f"{row.sampled_reward:.3f}", *(f"{row.pass_at[k]:.3f}" for k in ks)] for row in result.rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (f"{result.samples} samples per task at temperature {result.temperature:g}; greedy = temperature 0; "
            f"seed {result.seed}" + ("" if result.run_spec_found else "; run spec not found, defaults used"))
    return "\n".join([*lines, note])
