"""Metric sinks behind `kpop.metrics.MetricsWriter`: TensorBoard and Weights & Biases.

Contract: a sink has `write(phase, step, record)` and `close()`; it receives the full JSONL
record and keeps only what it can show (numbers as scalars, `*_hist` lists as histograms).
Names are `<phase>/<key>`; eval records also carry their `label` in the JSONL, not in the sinks
(their steps already place them on the RL axis). `open_sinks` never raises: a sink whose
library is missing or which fails to start is skipped with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from kpop.spec.run import LoggingSpec

log = logging.getLogger(__name__)

SKIP_KEYS = {"phase", "step", "time", "label"}
INIT_TIMEOUT_S = 300.0


class Sink(Protocol):
    def write(self, phase: str, step: int, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's plain numeric values (bools and the bookkeeping keys excluded)."""
    return {k: float(v) for k, v in record.items()
            if k not in SKIP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def histograms(record: dict[str, Any]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in record.items() if k.endswith("_hist") and isinstance(v, list)}


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, phase: str, step: int, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(f"{phase}/{key}", value, step)
        for key, counts in histograms(record).items():
            if sum(counts) > 0:
                self._histogram(f"{phase}/{key}", counts, step)
        self.writer.flush()

    def _histogram(self, tag: str, counts: list[float], step: int) -> None:
        """Counts indexed by an integer bucket (e.g. version gap 0, 1, 2, ...)."""
        values = [i for i, c in enumerate(counts) if c]
        total = sum(counts)
        self.writer.add_histogram_raw(
            tag, min=min(values), max=max(values), num=total,
            sum=sum(i * c for i, c in enumerate(counts)), sum_squares=sum(i * i * c for i, c in enumerate(counts)),
            bucket_limits=[i + 0.5 for i in range(len(counts))], bucket_counts=counts, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, spec: LoggingSpec, config: dict[str, Any]) -> None:
        import wandb

        w = spec.wandb
        self._wandb = wandb
        self.run = wandb.init(project=w.project, entity=w.entity, name=w.name or config.get("name"),
                              tags=list(w.tags), mode=w.mode, dir=str(run_dir), config=config,
                              reinit="finish_previous",
                              # a loaded machine can take long to start wandb-core; stdout stays ours
                              settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="off"))
        self._phases: set[str] = set()

    def write(self, phase: str, step: int, record: dict[str, Any]) -> None:
        if phase not in self._phases:
            self.run.define_metric(f"{phase}/step")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self._phases.add(phase)
        data: dict[str, Any] = {f"{phase}/{k}": v for k, v in scalars(record).items()}
        for key, counts in histograms(record).items():
            data[f"{phase}/{key}"] = self._wandb.Histogram(np_histogram=(counts, list(range(len(counts) + 1))))
        data[f"{phase}/step"] = step
        self.run.log(data)

    def close(self) -> None:
        self.run.finish()
        # finish() can return before wandb-core has flushed the offline run file; teardown waits
        # for the service to exit, so the files are complete once close() returns.
        self._wandb.teardown()


def open_sinks(run_dir: Path, spec: LoggingSpec, config: dict[str, Any]) -> list[Sink]:
    sinks: list[Sink] = []
    if spec.tensorboard:
        try:
            sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        except Exception as exc:  # noqa: BLE001 (tensorboard missing or unwritable: JSONL still works)
            log.warning("TensorBoard logging disabled: %s", exc)
    if spec.wandb.mode != "disabled":
        try:
            sinks.append(WandbSink(run_dir, spec, config))
        except Exception as exc:  # noqa: BLE001 (wandb missing, offline dir unwritable, no login)
            log.warning("W&B logging disabled (%s mode): %s", spec.wandb.mode, exc)
    return sinks
