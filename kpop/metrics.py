"""Run metrics: one record per step, always as JSONL, and to TensorBoard / W&B when configured.

Records
-------
Every record is one JSON object on one line of `<run_dir>/metrics.jsonl` (append-only; a resumed
run continues the file). Common keys: `phase` ("sft" | "eval" | "rl"), `step` (int), `time`
(seconds since the writer started). Values are numbers, strings (only `label`) or lists of
numbers (only keys ending in `_hist`). A key absent from a record means "not measured", never 0.

phase "sft" (one per supervised cold-start step)
    loss, grad_norm, tokens, verified, solved
phase "eval" (greedy decoding on held-out tasks)
    label ("before_rl" | "during_rl" | "after_rl"), reward, reward/<part>, gen_tokens, turns,
    episodes, and the trajectory statistics below
phase "rl" (one per RL step)
    reward, reward/<part>       mean total reward and its parts (e.g. reward/task)
    gen_tokens, turns, episodes mean generated tokens and turns per episode; episodes in the batch
    loss, grad_norm             learner step (grad_norm: the largest of its optimiser updates)
    trained_fraction            share of generated tokens the learner trained on: those of samples
                                with a non-zero advantage (a group whose samples all scored the
                                same teaches nothing)
    mismatch                    mean |log p_trainer - log p_engine| over trained tokens
    clipped_fraction            share of (trained token, optimiser update) pairs where the PPO
                                clip took effect (0 unless learner.minibatches x epochs > 1)
    masked_fraction             fraction of generated tokens the off-policy correction masked
                                (KPop binary-KL test or weight cap, IcePop band)
    version                     policy version the engines serve after the step
    step_s, gen_s, train_s      wall-clock seconds: whole step, generation, learner step
    gen_tokens_per_s            generated tokens per second of generation
    and the trajectory statistics below.

Trajectory statistics (`trajectory_stats`, in "rl" and "eval" records)
    response_len_p50, response_len_max   generated tokens per episode
    pass_rate                            fraction of episodes that passed (task score >= 0.99)
    pass_rate/<env>, episodes/<env>      the same per environment family (Trajectory.env_id)
    env_latency_p50/_p95/_p99            seconds per environment step (an episode's env time
                                         divided by its turns), percentiles over episodes
    episode_s_p50, episode_s_max         wall-clock seconds per episode
    staleness_hist                       counts of generated tokens by version gap: index g
                                         counts tokens sampled g versions behind the policy
    staleness_mean, staleness_max        mean and largest version gap over generated tokens

Reserved for the asynchronous scheduler (same "rl" records): buffer_size, buffer_capacity,
paused, resumed (counts in the step), engine_util (0..1, mean over engines); it may overwrite the
staleness_* and env_latency_* keys with its own, more exact, measurements.

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
import time
from pathlib import Path
from typing import Any

from kpop.report.sinks import Sink, open_sinks
from kpop.report.stats import PASS_THRESHOLD, trajectory_stats
from kpop.spec.run import LoggingSpec

__all__ = ["PASS_THRESHOLD", "MetricsWriter", "read_metrics", "trajectory_stats"]

log = logging.getLogger(__name__)


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
