"""`envs:` section: which registered environments a run trains on, with what weight, and which
reward-shaping terms (`kpop.envs.rewards`) each one composes onto its task reward."""

from typing import Any, Literal

from pydantic import Field

from kpop.spec.base import StrictModel, tagged_union


class FormatTermSpec(StrictModel):
    type: Literal["format"] = Field("format", description="Evo-CoT format penalty: forbidden tags in the model's text.")
    forbidden_tags: list[str] = Field(default_factory=lambda: ["think"], max_length=32, description="Tag names whose presence is penalised (e.g. think in instant mode).")
    penalty: float = Field(0.5, ge=0.0, le=1.0, description="Amount subtracted when a forbidden tag appears.")


class RepetitionTermSpec(StrictModel):
    type: Literal["repetition"] = Field("repetition", description="zlib compression-ratio repetition penalty on the model's text.")
    threshold: float = Field(4.0, gt=1.0, le=100.0, description="Compression ratio above which the penalty starts.")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="Largest penalty, reached at twice the threshold.")
    min_chars: int = Field(200, ge=0, le=10**7, description="Shorter texts are not judged.")


class ToolSequenceTermSpec(StrictModel):
    type: Literal["tool_sequence"] = Field("tool_sequence", description="Agreement of the tool-call sequence with the reference solver's.")
    weight: float = Field(0.2, ge=0.0, le=1.0, description="Reward becomes (1 - weight) * task reward + weight * agreement.")
    name_only_credit: float = Field(0.25, ge=0.0, le=1.0, description="Credit for a call with the right name but other arguments.")


class DynamicLengthTermSpec(StrictModel):
    type: Literal["dynamic_length"] = Field("dynamic_length", description="Evo-CoT dynamic length reward over the samples of one prompt (group level).")
    alpha: float = Field(0.1, ge=0.0, le=1.0, description="Scale of the length term (larger for easier tasks).")


RewardTermSpec = tagged_union(FormatTermSpec, RepetitionTermSpec, ToolSequenceTermSpec, DynamicLengthTermSpec)


class EnvEntrySpec(StrictModel):
    name: str = Field(description="Registered environment name (see `kpop envs list`).")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight among the run's environments.")
    options: dict[str, Any] = Field(default_factory=dict, description="Environment options, checked against the environment's own option model.")
    rewards: list[RewardTermSpec] = Field(default_factory=list, max_length=16, description="Reward-shaping terms added to this environment's task reward, in order.")
