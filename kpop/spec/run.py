"""`train:`, `sft:`, `scheduler:`, `cluster:` and `logging:` sections: the shape of the run itself."""

from typing import Literal

from pydantic import Field

from kpop.spec.base import StrictModel, tagged_union


class SFTSpec(StrictModel):
    steps: int = Field(60, ge=0, le=10_000_000, description="Cold-start supervised steps on verified reference-solver data (0 = none).")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Learning rate of the cold start.")
    batch_size: int = Field(32, ge=1, le=65536, description="Sequences per supervised step.")
    num_examples: int = Field(512, ge=1, le=100_000_000, description="Verified solver episodes generated for the cold start.")


class TrainSpec(StrictModel):
    steps: int = Field(30, ge=0, le=100_000_000, description="RL optimisation steps.")
    tasks_per_step: int = Field(16, ge=1, le=1_000_000, description="Tasks per step; each is sampled group_size times.")
    eval_tasks: int = Field(128, ge=0, le=1_000_000, description="Held-out tasks for the before/after evaluation (greedy).")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps as well (0 = only before and after RL).")
    checkpoint_every: int = Field(10, ge=1, description="Save a checkpoint every N steps (and at the end).")


class SyncSchedulerSpec(StrictModel):
    type: Literal["sync"] = Field("sync", description="Synchronous RL: generate a batch, train on it, push weights.")


SchedulerSpec = tagged_union(SyncSchedulerSpec)


class ClusterSpec(StrictModel):
    address: str | None = Field(None, description="Ray address (ray://host:10001 or auto); unset starts a local Ray instance.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (default: all).")


class WandbSpec(StrictModel):
    mode: Literal["disabled", "offline", "online"] = Field("disabled", description="Weights & Biases: off, local files under <run_dir>/wandb (sync later with `wandb sync`), or live upload.")
    project: str = Field("kpop", min_length=1, max_length=128, description="W&B project name.")
    entity: str | None = Field(None, max_length=128, description="W&B entity (team or user); unset uses the account default.")
    name: str | None = Field(None, max_length=128, description="W&B run name; unset uses the run's name.")
    tags: list[str] = Field(default_factory=list, max_length=32, description="W&B run tags.")


class LoggingSpec(StrictModel):
    progress: Literal["auto", "bar", "lines", "off"] = Field("auto", description="Progress display: a live bar on a terminal, plain lines otherwise.")
    tensorboard: bool = Field(True, description="Also write metrics as TensorBoard events under <run_dir>/tensorboard.")
    wandb: WandbSpec = Field(default_factory=WandbSpec, description="Weights & Biases logging (needs the optional `wandb` package unless disabled).")
