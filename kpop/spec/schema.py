"""RunSpec: the whole YAML spec of a run, one strict pydantic model per section.

Every field has a default (the quickstart), bounds and a one-line description; unknown keys are
rejected. `kpop/spec/load.py` turns YAML + `--set` overrides into a RunSpec or a list of
path-named errors. A field no run can honour yet is rejected here with a message that says so
(learner.distill / learner.preference settings without their rounds; rounds under the KPop
scheduler, or scheduled past the last RL step); checks that need the environment registry or compare
sections are `kpop run`'s (kpop/spec/resolve.py). What each field configures at run time:
kpop.runtime (tests/kpop/test_runtime_coverage.py).
"""

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from kpop.spec.base import StrictModel
from kpop.spec.envs import EnvEntrySpec
from kpop.spec.learner import LearnerSpec, settings_need_rounds
from kpop.spec.model import LlamaModelSpec, ModelSpec, TokenizerSpec
from kpop.spec.rollout import RolloutSpec
from kpop.spec.run import ClusterSpec, LoggingSpec, SchedulerSpec, SFTSpec, SyncSchedulerSpec, TrainSpec
from kpop.spec.sandbox import SandboxSpec


def _default_envs() -> list[EnvEntrySpec]:
    return [EnvEntrySpec(name="calculator")]


class RunSpec(StrictModel):
    name: str = Field("quickstart", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Run name (letters, digits, _ . -).")
    run_dir: Path | None = Field(None, description="Where checkpoints and metrics go (default runs/<name>).")
    seed: int = Field(0, ge=0, description="Seed for task sampling, model init and sampling.")
    model: ModelSpec = Field(default_factory=LlamaModelSpec, description="The policy model.")
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec, description="The tokenizer.")
    envs: list[EnvEntrySpec] = Field(default_factory=_default_envs, min_length=1, description="Environments trained on.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Engines and agent loop.")
    learner: LearnerSpec = Field(default_factory=LearnerSpec, description="Learner and objective.")
    sft: SFTSpec = Field(default_factory=SFTSpec, description="Supervised cold start before RL.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="RL loop length and evaluation.")
    scheduler: SchedulerSpec = Field(default_factory=SyncSchedulerSpec, description="How rollouts and updates interleave.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Where actors run.")
    logging: LoggingSpec = Field(default_factory=LoggingSpec, description="Progress display.")
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec, description="Where model-written code runs, with which limits.")

    _round_settings = field_validator("learner")(settings_need_rounds)

    @model_validator(mode="after")
    def _rounds_run(self) -> "RunSpec":
        for name in ("distill", "preference"):
            every = getattr(self.learner, name).every
            if not every:
                continue
            if every > self.train.steps:
                raise ValueError(f"learner.{name}.every ({every}) is more than train.steps ({self.train.steps}): no round "
                                 f"would run; lower it or set it to 0")
        return self

    @model_validator(mode="after")
    def _fill_run_dir(self) -> "RunSpec":
        if self.run_dir is None:
            object.__setattr__(self, "run_dir", Path("runs") / self.name)
        return self
