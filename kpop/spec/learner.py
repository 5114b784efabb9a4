"""`learner:` section: the DeepSpeed engine and the training objective."""

from typing import Literal

from pydantic import Field

from kpop.spec.base import StrictModel, tagged_union


class GRPOSpec(StrictModel):
    type: Literal["grpo"] = Field("grpo", description="PPO-clip with a per-token ratio and group-normalised advantages.")
    clip_eps: float = Field(0.2, gt=0, le=10, description="Clip range epsilon of the ratio.")
    normalize_std: bool = Field(True, description="Divide advantages by the group's reward std.")


ObjectiveSpec = tagged_union(GRPOSpec)


class QuantSpec(StrictModel):
    recipe: Literal["bf16", "ufp4", "nvfp4", "mxfp4"] = Field(
        "bf16", description="4-bit training recipe for the learner's linear layers (kpop.quant); bf16 = off."
    )
    keep_first_blocks: int = Field(1, ge=0, le=1024, description="Leading transformer blocks kept in high precision.")
    keep_last_blocks: int = Field(1, ge=0, le=1024, description="Trailing transformer blocks kept in high precision.")
    keep_lm_head: bool = Field(True, description="Keep the LM head (any linear named *lm_head*) in high precision.")
    rht_size: Literal[16, 32, 64, 128] | None = Field(
        None, description="Random Hadamard transform size; None = the recipe's default (16, or 32 for mxfp4)."
    )


class LearnerSpec(StrictModel):
    objective: ObjectiveSpec = Field(default_factory=GRPOSpec, description="The policy-gradient objective.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate for RL steps.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas.")
    grad_clip: float = Field(1.0, ge=0, le=1e6, description="Gradient-norm clip (0 = off).")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training precision.")
    micro_batch_size: int = Field(16, ge=1, le=65536, description="Sequences per forward/backward pass.")
    num_ranks: int = Field(1, ge=1, le=65536, description="Data-parallel learner ranks (Ray actors).")
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs per learner rank.")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per learner rank.")
    quant: QuantSpec = Field(default_factory=QuantSpec, description="FP4 (UFP4/NVFP4/MXFP4) training GEMMs; off by default.")
