"""`train:`, `sft:`, `scheduler:`, `cluster:` and `logging:` sections: the shape of the run itself."""

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from kpop.spec.base import StrictModel, tagged_union


class SFTAnnealSpec(StrictModel):
    steps: int = Field(0, ge=0, le=10_000_000, description="SFT steps after the first phase of the cold start (0 = none), on reference-solver episodes generated with `env_options`: a second data mix, as LLM pre-training anneals on a different mix at its end.")
    env_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per environment name of the run, option overrides for the reference solver of this phase (merged over `envs[].options`), e.g. {calculator: {reference_tool_rate: 0.3}}.")
    lr: float | None = Field(None, gt=0, le=1.0, description="Learning rate of this phase (None = sft.lr). Adam's moments carry over from the first phase, whose last steps had small gradients, so the new mix's first steps move far at the same rate.")


class SFTSpec(StrictModel):
    steps: int = Field(300, ge=0, le=10_000_000, description="Most cold-start supervised steps on verified reference-solver data (0 = none).")
    target_loss: float = Field(0.05, ge=0.0, le=100.0, description="Stop the cold start early once the mean loss of its last 10 steps is at most this (0 = run every step): the step at which a tiny model learns to copy varies with seed and machine, the loss it must reach does not.")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Learning rate of the cold start.")
    batch_size: int = Field(32, ge=1, le=65536, description="Sequences per supervised step.")
    num_examples: int = Field(8192, ge=1, le=100_000_000, description="Verified solver episodes generated for the cold start.")
    anneal: SFTAnnealSpec = Field(default_factory=SFTAnnealSpec, description="An optional second cold-start phase on a different data mix (anneal.steps x batch_size solver episodes, at most num_examples, from their own task stream).")

    @model_validator(mode="after")
    def _anneal_follows_a_first_phase(self):
        if self.anneal.steps and not self.steps:
            raise ValueError("sft.anneal.steps > 0 needs a first cold-start phase (sft.steps > 0); set sft.steps "
                             "or sft.anneal.steps: 0")
        return self


class TrainSpec(StrictModel):
    steps: int = Field(40, ge=0, le=100_000_000, description="RL optimisation steps.")
    tasks_per_step: int = Field(16, ge=1, le=1_000_000, description="Tasks per step; each is sampled group_size times.")
    eval_tasks: int = Field(256, ge=0, le=1_000_000, description="Held-out tasks for the before/after evaluation (greedy).")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps as well (0 = only before and after RL).")
    min_start_reward: float = Field(0.1, ge=0.0, le=1.0, description="Warn after the cold start when held-out sampled reward (one sample per task at the run's temperature) is below this: RL learns from groups whose samples disagree, so it rarely improves a policy whose samples rarely succeed (0 = never warn).")
    checkpoint_every: int = Field(10, ge=1, description="Save a checkpoint every N steps (and at the end).")


class SyncSchedulerSpec(StrictModel):
    type: Literal["sync"] = Field("sync", description="Synchronous RL: generate a batch, train on it, push weights.")


class DPRSpec(StrictModel):
    enabled: bool = Field(True, description="Dynamic Pass Rating curriculum: revisit tasks by their pass-rate history.")
    revisit_prob: float = Field(0.25, ge=0.0, le=1.0, description="Chance that a draw revisits a seen task of its family instead of a fresh one.")
    window: int = Field(8, ge=1, le=1024, description="Most recent group pass rates kept per task.")
    pass_threshold: float = Field(0.99, ge=0.0, le=1.0, description="A sample passes when its reward is at least this.")
    solved_rate: float = Field(0.9, gt=0.0, le=1.0, description="Mean pass rate at or above which a task counts as solved.")
    solved_weight: float = Field(0.1, ge=0.0, le=1.0, description="Revisit weight of a solved task (unsolved tasks weigh 1).")
    unstable_bonus: float = Field(1.0, ge=0.0, le=100.0, description="Extra weight 4p(1-p)*bonus for tasks whose pass rate p is mixed.")
    max_tracked: int = Field(4096, ge=1, le=10_000_000, description="Tasks whose history is kept (oldest forgotten first).")


class KPopSchedulerSpec(StrictModel):
    type: Literal["kpop"] = Field("kpop", description="KPop asynchronous scheduling: overlap dispatch, staleness bound, partial rollouts.")
    max_staleness: int = Field(2, ge=0, le=1000, description="eta: largest policy-version gap of any trained token (0 = synchronous).")
    token_budget: int = Field(0, ge=0, le=10**12, description="Phi: a step fires when ready groups hold this many generated tokens (0 = tasks_per_step groups).")
    max_concurrent: int = Field(64, ge=1, le=1_000_000, description="Groups in flight at most (admission cap).")
    tail_migration: bool = Field(True, description="Move the longest-running requests of a congested engine to idle replicas.")
    tail_min_age_s: float = Field(2.0, ge=0.0, le=86400, description="Only requests running at least this long are migrated.")
    tail_max_moves: int = Field(4, ge=0, le=4096, description="Requests migrated per check.")
    tail_check_s: float = Field(0.5, gt=0.0, le=3600, description="Seconds between tail checks.")
    max_retries: int = Field(3, ge=0, le=100, description="Re-dispatches of one episode after actor failures before the run stops.")
    dpr: DPRSpec = Field(default_factory=DPRSpec, description="Dynamic Pass Rating curriculum.")


SchedulerSpec = tagged_union(SyncSchedulerSpec, KPopSchedulerSpec)


# A Ray node label key or value as `ray start --labels key=value` takes it (equality only here).
LABEL = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
Labels = dict[Annotated[str, StringConstraints(pattern=LABEL)], Annotated[str, StringConstraints(pattern=LABEL)]]


class PlacementSpec(StrictModel):
    learner: Labels = Field(default_factory=dict, max_length=16, description="Node labels (`ray start --labels k=v`) every learner rank must run on: the run waits start_timeout_s for such nodes to have room, then fails naming them (a run cannot replace its learner).")
    engine: Labels = Field(default_factory=dict, max_length=16, description="Node labels the engines go to first; when no such node has room (e.g. a replacement after that node was lost) an engine goes to any node with its CPUs/GPUs.")
    env_worker: Labels = Field(default_factory=dict, max_length=16, description="Node labels the environment workers go to first; like engine, a replacement goes anywhere when no such node is left.")


class ClusterSpec(StrictModel):
    address: str | None = Field(None, description="Ray address (ray://host:10001, host:6379 or auto); unset starts a local Ray instance.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (default: all, at least 4); only without an address.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="Which labelled nodes of the cluster each role's actors run on (only with an address).")
    start_timeout_s: float = Field(60.0, gt=0, le=86400, description="With cluster.address: seconds the run waits for the cluster to answer, to check its storage and to place the actors (resources free, their processes started and constructed: an environment worker loads its tokenizer) before failing with the address, the node or the missing resources; building engines and loading the learner's weights are not counted. Raise it on nodes so loaded that starting a process takes a minute. A local instance (no address) is checked to hold every actor before they start, and waits up to 30 minutes for their processes.")

    @model_validator(mode="after")
    def _local_or_cluster(self) -> "ClusterSpec":
        if self.address is not None and self.num_cpus is not None:
            raise ValueError("cluster.num_cpus sizes the local Ray instance started when cluster.address is unset; "
                             "a cluster at an address brings its own CPUs: remove one of the two")
        p = self.placement
        if self.address is None and (p.learner or p.engine or p.env_worker):
            raise ValueError("cluster.placement names labelled nodes of a cluster; the local Ray instance started "
                             "without cluster.address has one unlabelled node: set cluster.address or remove cluster.placement")
        return self


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

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads a bare `off` as False.
        return "off" if value is False else value
