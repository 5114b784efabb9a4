"""The report's plots: one PNG per question a person asks of a run, overlaying up to a few runs.

Contract: `render_plots(runs, out_dir)` writes every plot in `PLOTS` as `<out_dir>/<name>.png`
and returns a `Plot` per file, in `PLOTS` order. Every PNG is written even when its metrics are
absent (the axes then say "not measured in this run"), so a report always has the same files.
Every line series (one quantity of one run) has its own colour, in drawing order (PALETTE: the
default C0..C9, then tab20's light shades and tab20b: 40 colours before one repeats, as a
six-family run logs ~20 reward parts);
when runs are overlaid, run i also gets line style i, so a run's series read as a group. A per-step
series of at least SMOOTH_MIN points is drawn faint as logged with its smoothed curve on top
(kpop.report.smooth.ema, TensorBoard's debiased EMA), as users know it from TensorBoard and W&B.
Uses matplotlib's non-interactive Agg backend; no display is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after the backend is chosen)
from matplotlib.colors import to_hex
from matplotlib.ticker import MaxNLocator

from kpop.report.runs import RunData
from kpop.report.smooth import ema

SMOOTH_MIN = 5      # fewer points than this are drawn as logged: nothing to smooth
RAW_ALPHA = 0.25

STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
PALETTE = ([f"C{i}" for i in range(10)] + [to_hex(plt.get_cmap("tab20")(2 * k + 1)) for k in range(10)]
           + [to_hex(plt.get_cmap("tab20b")(k)) for k in range(20)])


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    caption: str
    path: Path


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _tag(run: RunData, runs: list[RunData], what: str) -> str:
    return what if len(runs) == 1 else f"{run.name}: {what}"


def _lines(ax, runs: list[RunData], phase: str, keys: list[str] | Callable[[RunData], list[str]],
           marker: str = "") -> int:
    """Plot `phase` series for each key of each run; returns how many series had points.

    `keys` is a list, or a function of the run for keys that differ between runs (reward parts).
    The n-th series drawn gets colour PALETTE[n].
    """
    drawn = 0
    for i, run in enumerate(runs):
        style = STYLES[i % len(STYLES)]
        for key in keys(run) if callable(keys) else keys:
            steps, values = run.series(phase, key)
            if not steps:
                continue
            colour, label = _colour(drawn), _tag(run, runs, key)
            if len(values) >= SMOOTH_MIN:
                ax.plot(steps, values, color=colour, linestyle=style, marker=marker, alpha=RAW_ALPHA, linewidth=1)
                ax.plot(steps, ema(values), color=colour, linestyle=style, linewidth=2, label=label)
            else:
                ax.plot(steps, values, color=colour, linestyle=style, marker=marker, label=label)
            drawn += 1
    return drawn


def _finish(ax, drawn: int, xlabel: str = "RL step", ylabel: str = "") -> None:
    if drawn:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])


def plot_reward(fig, runs: list[RunData]) -> None:
    ax = fig.subplots()
    drawn = _lines(ax, runs, "rl", lambda run: ["reward", *run.keys("rl", "reward/")])
    for run in runs:
        steps, values = run.series("eval", "reward")
        if steps:
            ax.plot(steps, values, color=_colour(drawn), marker="o", linestyle="none", markersize=8,
                    label=_tag(run, runs, "held-out reward (greedy)"))
            drawn += 1
    _finish(ax, drawn, ylabel="reward (mean over episodes)")


def plot_response_length(fig, runs: list[RunData]) -> None:
    ax = fig.subplots()
    _finish(ax, _lines(ax, runs, "rl", ["gen_tokens", "response_len_p50", "response_len_max"]),
            ylabel="generated tokens per episode")


def plot_mismatch(fig, runs: list[RunData]) -> None:
    top, bottom = fig.subplots(2, 1, sharex=True)
    _finish(top, _lines(top, runs, "rl", ["mismatch"], marker="."), ylabel="|log p_train - log p_engine|")
    _finish(bottom, _lines(bottom, runs, "rl", ["masked_fraction", "clipped_fraction"], marker="."),
            ylabel="fraction of generated tokens")


def plot_staleness(fig, runs: list[RunData]) -> None:
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    drawn = 0
    for i, run in enumerate(runs):
        hist = run.staleness_total()
        if hist:
            xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(hist))]
            ax.bar(xs, hist, width=width, color=_colour(i), label=_tag(run, runs, "generated tokens"))
            drawn += 1
    _finish(ax, drawn, xlabel="version gap (policy version - sampling version)", ylabel="tokens (all RL steps)")
    if drawn:
        ax.set_xticks(range(max(len(r.staleness_total()) for r in runs)))


def plot_throughput(fig, runs: list[RunData]) -> None:
    top, bottom = fig.subplots(2, 1, sharex=True)
    _finish(top, _lines(top, runs, "rl", ["gen_tokens_per_s"], marker="."), ylabel="generated tokens / s")
    _finish(bottom, _lines(bottom, runs, "rl", ["step_s", "gen_s", "train_s"], marker="."), ylabel="seconds per step")


def plot_env_latency(fig, runs: list[RunData]) -> None:
    ax = fig.subplots()
    drawn = _lines(ax, runs, "rl", ["env_latency_p50", "env_latency_p95", "env_latency_p99"], marker=".")
    _finish(ax, drawn, ylabel="seconds per environment step")
    if drawn:
        ax.set_ylim(bottom=0)


def plot_pass_rates(fig, runs: list[RunData]) -> None:
    left, right = fig.subplots(1, 2)
    drawn = _lines(left, runs, "rl", lambda run: run.keys("rl", "pass_rate/"), marker=".")
    _finish(left, drawn, ylabel="pass rate (training samples)")
    if drawn:
        left.set_ylim(-0.02, 1.02)
    bars = [(run, label, key, rec[key]) for run in runs for label, rec in run.eval_by_label().items()
            for key in sorted(rec) if key.startswith("pass_rate/")]
    colours = _family_colours(runs)
    for n, (run, label, key, value) in enumerate(bars):
        right.barh(n, value, color=colours.get((run.name, key), "grey"), alpha=0.5 if label == "before_rl" else 1.0)
        right.text(value + 0.01, n, f"{value:.2f}", va="center", fontsize=7)
    if bars:
        right.set_yticks(range(len(bars)), [_tag(run, runs, f"{k.split('/', 1)[1]} {label}")
                                            for run, label, k, _ in bars], fontsize=7)
        right.set_xlim(0, 1)
        right.set_xlabel("held-out pass rate (greedy)")
        right.grid(alpha=0.3, axis="x")
        right.invert_yaxis()
    else:
        _finish(right, 0)


def _family_colours(runs: list[RunData]) -> dict[tuple[str, str], str]:
    """(run, pass_rate key) -> the colour its training curve got from `_lines` (same order)."""
    keys = [(run.name, key) for run in runs for key in run.keys("rl", "pass_rate/") if run.series("rl", key)[0]]
    return {k: _colour(n) for n, k in enumerate(keys)}


def plot_sft_loss(fig, runs: list[RunData]) -> None:
    ax = fig.subplots()
    drawn = _lines(ax, runs, "sft", lambda run: ["loss", *run.keys("sft", "loss/")], marker=".")
    _finish(ax, drawn, xlabel="SFT step", ylabel="cross-entropy")


class PlotDef(NamedTuple):
    name: str
    title: str
    caption: str
    draw: Callable


PLOTS: list[PlotDef] = [
    PlotDef("reward", "Reward and its parts", (
        "Mean training reward per RL step and its parts, each in its own colour (faint: as logged; "
        "bold: smoothed); dots: greedy held-out reward before, during and after RL."), plot_reward),
    PlotDef("response_length", "Response length", "Generated tokens per episode: mean, median and longest.",
            plot_response_length),
    PlotDef("mismatch", "Train/inference mismatch", (
        "Top: mean |log-prob difference| between learner and engine on generated tokens. "
        "Bottom: fraction of tokens masked (off-policy correction) or PPO-clipped."), plot_mismatch),
    PlotDef("staleness", "Staleness", (
        "Generated tokens by how many policy versions behind the learner they were sampled "
        "(0 = on-policy), summed over the run."), plot_staleness),
    PlotDef("throughput", "Throughput", "Top: generated tokens per second of generation. Bottom: step time split.",
            plot_throughput),
    PlotDef("env_latency", "Environment latency",
            "Seconds per environment step: p50 / p95 / p99 over a step's episodes.", plot_env_latency),
    PlotDef("pass_rates", "Pass rate per environment family", (
        "Left: training pass rate per family per step (faint: as logged; bold: smoothed). "
        "Right: greedy held-out pass rate per family in its curve's colour (faded: before RL)."), plot_pass_rates),
    PlotDef("sft_loss", "Cold-start SFT loss", "Cross-entropy on verified reference-solver episodes; with several "
            "environments, also each one's own (loss/<env>).", plot_sft_loss),
]


def render_plots(runs: list[RunData], out_dir: Path) -> list[Plot]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, title, caption, draw in PLOTS:
        fig = plt.figure(figsize=(9, 4.8), dpi=100)
        try:
            draw(fig, runs)
            fig.suptitle(title)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
        plots.append(Plot(name, title, caption, path))
    return plots
