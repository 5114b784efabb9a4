"""Run metrics: one record per step, always as JSONL, and to TensorBoard / W&B when configured.

Records
-------
Every record is one JSON object on one line of `<run_dir>/metrics.jsonl` (append-only; a resumed
run first cuts it back to the size it had at its checkpoint, `truncate_metrics`, then continues it). Common keys: `phase` ("sft" | "eval" | "rl"), `step` (int), `time`
(seconds since the writer started); the training rounds (kpop.stages) write phases "distill" and
"preference", numbered by learner step of that phase over the run. Values are numbers, strings (only `label`) or lists of
numbers (only keys ending in `_hist`). A key absent from a record means "not measured", never 0.

Every other key has exactly one definition: its entry in `KEYS` below (phases and meaning). A
name with `<...>` is a family (`reward/<part>` covers `reward/task`, `reward/shape/format`, ...).
`MetricsWriter.write` refuses a key that has no entry, so a new metric is defined here first; the
README's metric table is `markdown_table()` (a test keeps the two equal). Both loops build their
"rl" record with kpop.loop.record.rl_record; the KPop loop adds the scheduler's keys.

Sinks
-----
JSONL is always written (flushed per record). TensorBoard (`logging.tensorboard`, default on)
gets every numeric value as scalar `<phase>/<key>` at `step`, and `*_hist` lists as raw
histograms, under `<run_dir>/tensorboard`. W&B (`logging.wandb.mode` offline | online) gets the
same values as `<phase>/<key>` with `<phase>/step` as the step metric; offline mode writes under
`<run_dir>/wandb` and needs no network. A sink that cannot start logs a warning and is skipped:
metrics.jsonl is the record of truth. Without an explicit `logging` spec the writer reads
`<run_dir>/spec.json` (written by `kpop.launch.run` before the writer starts).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpop.report.sinks import Sink, open_sinks
from kpop.report.stats import PASS_THRESHOLD, trajectory_stats
from kpop.spec.run import LoggingSpec

__all__ = ["KEYS", "PASS_THRESHOLD", "MetricKey", "MetricsWriter", "definition", "markdown_table", "read_metrics",
           "trajectory_stats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricKey:
    name: str                 # a key, or a family with one `<...>` placeholder (any non-empty rest)
    phases: tuple[str, ...]   # the record phases that carry it
    meaning: str
    scheduler_only: bool = False  # written only by the KPop loop


SFT, EVAL, RL, EVAL_RL = ("sft",), ("eval",), ("rl",), ("eval", "rl")
DISTILL, PREF = ("distill",), ("preference",)
ROUNDS = DISTILL + PREF


def _scheduler(name: str, meaning: str) -> MetricKey:
    return MetricKey(name, RL, meaning, scheduler_only=True)


KEYS: tuple[MetricKey, ...] = (
    MetricKey("loss", ("sft", "rl", *ROUNDS), "the learner step's loss (SFT and distill: mean token cross-entropy; "
              "preference: DPO loss)"),
    MetricKey("loss/<env>", SFT + DISTILL, "the same loss over that environment's sequences of the step (a mixed cold "
              "start's per-family loss; `loss` is their token-weighted mean)"),
    MetricKey("grad_norm", ("sft", "rl", *ROUNDS), "gradient norm before clipping (RL: the largest of the step's optimiser updates)"),
    MetricKey("tokens", SFT + ROUNDS, "tokens trained in the step (generated tokens of the distillation targets, of "
              "the preference pairs)"),
    MetricKey("moe_load_max_mean", ("sft", "rl"), "MoE routing balance over the step's training forwards: tokens "
              "of the busiest expert / mean tokens per expert, averaged over the MoE layers (1 = balanced; models "
              "with MoE layers only)"),
    MetricKey("moe_load_max_mean/<layer>", ("sft", "rl"), "the same for the MoE layer at index <layer> of "
              "model.layers"),
    MetricKey("mtp_loss", ("sft", "rl", "distill"), "multi-token-prediction loss of the step: cross-entropy of the MTP layers' "
              "predictions of the trained tokens, averaged over depths, unweighted (the step trains "
              "mtp_loss_scaling_factor x it; RL: the MTP layers only; models with MTP layers only)"),
    MetricKey("quant_gemms", ("sft", "rl", *ROUNDS), "GEMMs the learner ran with 4-bit operands in the step "
              "(learner.quant.recipe set only): the forward, input-gradient and weight-gradient products of every "
              "quantised linear layer, summed over ranks"),
    MetricKey("quant_gemms/<gemm>", ("sft", "rl", *ROUNDS), "the same for one GEMM: fprop, dgrad or wgrad"),
    MetricKey("verified", SFT, "reference-solver episodes that verified correct (the cold-start data)"),
    MetricKey("solved", SFT, "reference-solver episodes played"),
    MetricKey("label", EVAL, "which evaluation: before_rl, during_rl, after_rl, or around the rounds after an RL "
              "step: before_<kind> (before the step's first round), after_distill, after_preference"),
    MetricKey("reward", EVAL_RL + ROUNDS, "mean total reward per episode (eval: greedy decoding on held-out tasks)"),
    MetricKey("sampled_reward", EVAL, "mean reward of one sampled episode per held-out task (what the policy earns)"),
    MetricKey("reward/<part>", EVAL_RL, "mean of one reward part: reward/task is the unshaped task score, "
              "reward/shape/<term> each reward term (the group-level dynamic_length included)"),
    MetricKey("gen_tokens", EVAL_RL + ROUNDS, "mean generated tokens per episode"),
    MetricKey("turns", EVAL_RL, "mean model turns per episode"),
    MetricKey("episodes", EVAL_RL + ROUNDS, "episodes in the batch or evaluation"),
    MetricKey("correct_tokens", EVAL + DISTILL, "mean generated tokens per correct response (eval: held-out greedy "
              "episodes that pass; distill: the step's correct samples as generated)"),
    MetricKey("correct_tokens/<env>", EVAL, "the same for the held-out episodes of one environment"),
    MetricKey("correct", DISTILL, "samples whose task score reached learner.distill.correct_threshold"),
    MetricKey("targets", DISTILL, "prompts with a correct sample: one distillation target each"),
    MetricKey("target_tokens", DISTILL, "mean generated tokens per distillation target (the shortest correct sample "
              "of its prompt, after the cut)"),
    MetricKey("pruned", DISTILL, "targets cut after their answer (text after the first answer of the final turn)"),
    MetricKey("pruned_tokens", DISTILL, "generated tokens those cuts removed"),
    MetricKey("rubric", EVAL + PREF, "mean signed rubric score (learner.preference.rubric_weights, without focus) of "
              "the episodes that report a rubric part (eval: held-out greedy)"),
    MetricKey("sampled_rubric", EVAL, "the same over one sampled held-out episode per task"),
    MetricKey("pairs", PREF, "preference pairs (best vs worst sample of a prompt under the focus-weighted rubric score)"),
    MetricKey("pair_accuracy", PREF, "share of the pairs whose implicit DPO reward margin was positive before the update"),
    MetricKey("trained_fraction", RL, "share of generated tokens the learner trained on: those of samples with a "
              "non-zero advantage (a group whose samples all scored the same teaches nothing)"),
    MetricKey("mismatch", RL, "mean |log p_trainer - log p_engine| over trained tokens"),
    MetricKey("clipped_fraction", RL, "share of (trained token, optimiser update) pairs where the PPO clip took "
              "effect (0 unless learner.minibatches x epochs > 1)"),
    MetricKey("masked_fraction", RL, "share of generated tokens the off-policy correction masked (KPop "
              "binary-KL test or weight cap, IcePop band)"),
    MetricKey("version", RL + ROUNDS, "policy version (learner numbering) the engines serve after the step"),
    MetricKey("step_s", RL, "wall-clock seconds of the whole step"),
    MetricKey("gen_s", RL, "seconds from the step's start until its batch was ready (generation; KPop: waiting)"),
    MetricKey("train_s", RL, "seconds of the learner step"),
    MetricKey("gen_tokens_per_s", RL, "generated tokens of the batch per second of gen_s"),
    MetricKey("tokens_per_s", RL, "generated tokens of the batch per second of step_s"),
    MetricKey("response_len_p50", EVAL_RL, "median generated tokens per episode"),
    MetricKey("response_len_max", EVAL_RL, "most generated tokens of an episode"),
    MetricKey("pass_rate", EVAL_RL, "share of episodes whose task score is at least 0.99"),
    MetricKey("pass_rate/<env>", EVAL_RL, "pass_rate of one environment family"),
    MetricKey("episodes/<env>", EVAL_RL, "episodes of one environment family"),
    MetricKey("env_reward/<env>", EVAL_RL, "mean reward of one environment family's episodes (the eval record's: held-out greedy)"),
    MetricKey("sandbox_runs", EVAL_RL, "sandbox executions the episodes' environments ran (code tools, verifiers)"),
    MetricKey("env_errors", EVAL_RL, "episodes the environment failed (its tool, reward or verifier hung past the step "
              "timeout or raised): finish_reason env_error, reward 0; the run goes on"),
    MetricKey("env_errors/<env>/<kind>", EVAL_RL, "the same for one environment family and kind (timeout or "
              "exception); present when non-zero"),
    MetricKey("env_latency_p50", EVAL_RL, "median over episodes of seconds per environment step (an episode's "
              "environment time divided by its turns)"),
    MetricKey("env_latency_p95", EVAL_RL, "95th percentile of the same"),
    MetricKey("env_latency_p99", EVAL_RL, "99th percentile of the same"),
    MetricKey("episode_s_p50", EVAL_RL, "median wall-clock seconds per episode"),
    MetricKey("episode_s_max", EVAL_RL, "longest episode in seconds"),
    MetricKey("staleness_hist", EVAL_RL, "generated tokens counted by version gap: index g counts tokens sampled "
              "g versions behind the policy the step trains (synchronous loop: all at 0)"),
    MetricKey("staleness_mean", EVAL_RL, "mean version gap over the same tokens"),
    MetricKey("staleness_max", EVAL_RL, "largest version gap of any of the same tokens (at most max_staleness)"),
    _scheduler("rl_version", "RL steps trained so far (the scheduler's version numbering)"),
    _scheduler("groups", "groups in the step's batch"),
    _scheduler("buffer_size", "complete groups left in the buffer after the step took its batch"),
    _scheduler("in_flight", "episodes running when the step fired"),
    _scheduler("paused", "episodes in flight across the step's weight update (kept, resumed under the new "
              "version)"),
    _scheduler("resumed", "trained trajectories whose tokens span more than one version"),
    _scheduler("engine_util", "share of engine samples with requests in flight during the step (0..1)"),
    _scheduler("migrated", "tail migration: requests aborted on a congested engine (cumulative)"),
    _scheduler("moved", "tail migration: migrated turns that continued on another engine (cumulative)"),
    _scheduler("requeued", "groups dropped as too stale and re-run (cumulative)"),
    _scheduler("engine_restarts", "engines replaced after dying (cumulative)"),
    _scheduler("worker_restarts", "environment workers replaced after dying (cumulative)"),
    _scheduler("retried", "episodes re-dispatched after an actor failure (cumulative)"),
    _scheduler("replayable_turns", "finished turns of paused episodes restored from the checkpoint (cumulative)"),
    _scheduler("dpr_tasks", "tasks whose pass-rate history the DPR curriculum keeps"),
    _scheduler("dpr_solved", "share of those tasks counted as solved"),
)


def _pattern(name: str) -> re.Pattern:
    return re.compile(re.sub(r"<[a-z_]+>", ".+", re.escape(name)) + r"\Z")


_EXACT = {k.name: k for k in KEYS if "<" not in k.name}
_FAMILIES = [(_pattern(k.name), k) for k in KEYS if "<" in k.name]


def definition(key: str, phase: str) -> MetricKey | None:
    """The definition of `key` in records of `phase`; None when it has none."""
    found = _EXACT.get(key) or next((k for p, k in _FAMILIES if p.match(key)), None)
    return found if found is not None and phase in found.phases else None


def markdown_table() -> str:
    """The README's metric table: one row per key, in KEYS order."""
    rows = ["| key | phases | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k.name}` | {', '.join(k.phases)}{' (KPop)' if k.scheduler_only else ''} | "
             f"{k.meaning.replace('|', chr(92) + '|')} |" for k in KEYS]
    return "\n".join(rows)


class MetricsWriter:
    def __init__(self, run_dir: Path, logging_spec: LoggingSpec | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        if logging_spec is None:
            logging_spec, config = _spec_from_run_dir(self.run_dir, config)
        self.sinks: list[Sink] = open_sinks(self.run_dir, logging_spec, config or {})
        self._closed = False
        atexit.register(self.close)

    def write(self, phase: str, step: int, values: dict[str, Any]) -> dict[str, Any]:
        undefined = sorted(k for k in values if definition(k, phase) is None)
        if undefined:
            raise ValueError(f"metric key(s) {undefined} of phase {phase!r} have no definition in "
                             "kpop/metrics.py KEYS; define each key once there (and in the README table)")
        record = {"phase": phase, "step": step, "time": round(time.time() - self.t0, 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        for sink in list(self.sinks):
            try:
                sink.write(phase, step, record)
            except Exception as exc:  # noqa: BLE001 (a broken sink must never stop the run)
                log.warning("metrics sink %s failed (%s); disabling it", type(sink).__name__, exc)
                self.sinks.remove(sink)
        return record

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 (closing is best effort at exit)
                log.warning("closing metrics sink %s failed: %s", type(sink).__name__, exc)


def truncate_metrics(run_dir: Path, size: int | None) -> None:
    """Cut metrics.jsonl back to `size` bytes (what it held at the checkpoint a run resumes from;
    0 for a run that starts over); None (a checkpoint that did not record it) keeps the file."""
    path = Path(run_dir) / "metrics.jsonl"
    if size is None or not path.is_file() or path.stat().st_size <= size:
        return
    tmp = path.with_suffix(".tmp")
    with path.open("rb") as f:
        tmp.write_bytes(f.read(size))
    tmp.replace(path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _spec_from_run_dir(run_dir: Path, config: dict | None) -> tuple[LoggingSpec, dict | None]:
    path = run_dir / "spec.json"
    if not path.is_file():
        return LoggingSpec(), config
    data = json.loads(path.read_text())
    return LoggingSpec.model_validate(data.get("logging", {})), config if config is not None else data


def _jsonable(value: Any) -> Any:
    """numpy / torch scalars and the like: their float value (NaN and inf stay JSON-legal names)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else str(number)
