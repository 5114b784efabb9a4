"""`learner:` section: the DeepSpeed engine, the training objective and its off-policy correction.

Objectives (`objective.type`): "grpo" (token ratio), "gspo" (sequence ratio), "lpo" (sentence
ratio, the Ling 2.0 default). Off-policy corrections (`off_policy.type`): "kpop" (binary-KL mask,
decoupled PPO weight), "icepop" (ratio band), "tis" (truncated importance sampling), "none".
Distillation ("distill" mode) and preference alignment ("dpo" mode) have their own sections, and
each says when its rounds run: `every: k` puts a round after every k-th RL step (0 = never; the
synchronous loop runs them, kpop.stages). A section whose rounds never run must stay at its
defaults (`settings_need_rounds`): settings no round uses are refused, not silently ignored.
"""

from typing import Literal

from pydantic import Field

from kpop.spec.base import StrictModel, tagged_union


class GRPOSpec(StrictModel):
    type: Literal["grpo"] = Field("grpo", description="PPO-clip with a per-token ratio and group-normalised advantages.")
    clip_eps: float = Field(0.2, gt=0, le=10, description="Clip range epsilon of the ratio.")
    normalize_std: bool = Field(True, description="Divide advantages by the group's reward std.")


class GSPOSpec(StrictModel):
    type: Literal["gspo"] = Field("gspo", description="PPO-clip with one geometric-mean ratio per sequence (GSPO).")
    clip_eps: float = Field(4e-4, gt=0, le=10, description="Clip range epsilon of the sequence ratio (GSPO paper: 3e-4..4e-4).")
    normalize_std: bool = Field(True, description="Divide advantages by the group's reward std.")


class LPOSpec(StrictModel):
    type: Literal["lpo"] = Field("lpo", description="PPO-clip with one geometric-mean ratio per sentence (Ling 2.0 LPO).")
    clip_eps: float = Field(0.03, gt=0, le=10, description="Clip range epsilon of the sentence ratio (Ling 2.0: 0.03).")
    normalize_std: bool = Field(True, description="Divide advantages by the group's reward std.")
    punctuation: str = Field(".!?;:,。！？；：，", min_length=1, max_length=64,
                             description="Pause punctuation ending a sentence (a newline always ends one).")


ObjectiveSpec = tagged_union(GRPOSpec, GSPOSpec, LPOSpec)


class KPopMaskSpec(StrictModel):
    type: Literal["kpop"] = Field("kpop", description="Mask tokens whose binary KL between trainer and engine exceeds phi; decoupled-PPO weight p/q.")
    phi: float = Field(0.75, gt=0, le=100, description="Binary-KL threshold (report: 0.75 maths, 2.0 logic/code).")
    cap: float | None = Field(5.0, gt=1, le=1e6, description="Also mask tokens whose weight p/q exceeds this (AReaL's behav_imp_weight_cap: stale rare tokens cannot dominate a step); null = no cap.")


class IcePopSpec(StrictModel):
    type: Literal["icepop"] = Field("icepop", description="IcePop: weight k = p/q inside [alpha, beta], 0 outside.")
    alpha: float = Field(0.5, gt=0, le=1, description="Lower edge of the ratio band (Ring-1T: 0.5).")
    beta: float = Field(5.0, ge=1, le=1000, description="Upper edge of the ratio band (Ring-1T: 5).")


class TISSpec(StrictModel):
    type: Literal["tis"] = Field("tis", description="Truncated importance sampling: weight min(p/q, cap).")
    cap: float = Field(2.0, ge=1, le=1000, description="Upper truncation of the importance weight.")


class NoCorrectionSpec(StrictModel):
    type: Literal["none"] = Field("none", description="No off-policy correction (engine log-probs only feed the metrics).")


OffPolicySpec = tagged_union(KPopMaskSpec, IcePopSpec, TISSpec, NoCorrectionSpec)


class DistillSpec(StrictModel):
    every: int = Field(0, ge=0, le=100_000_000, description="A shortest-correct distillation round after every N-th RL step (0 = none).")
    steps: int = Field(1, ge=1, le=100_000, description="Learner steps per round, each on freshly sampled prompts.")
    tasks: int = Field(16, ge=1, le=1_000_000, description="Prompts per round step, each sampled rollout.group_size times with the run's sampling; the shortest correct sample of each is the SFT target.")
    prune: bool = Field(True, description="Cut a correct sample after its final answer where its environment marks one (AgentEnv.answer_pattern, e.g. the calculator's 'Answer: N'): re-checking after the answer cannot change the score, so it is not taught.")
    correct_threshold: float = Field(1.0, ge=-1e6, le=1e6, description="A sample is correct when its task score (reward part 'accuracy', else 'task', else the reward) is >= this.")
    usual_turns: bool = Field(True, description="Choose each prompt's target among its correct samples with the most common number of turns (ties: the larger): a sample that skipped the tool and guessed right is not taught; false: the shortest of all correct samples.")
    lr: float | None = Field(None, gt=0, le=1.0, description="Learning rate of distill steps (None = the SFT learning rate).")


class PreferenceSpec(StrictModel):
    every: int = Field(0, ge=0, le=100_000_000, description="A preference (DPO) round after every N-th RL step (0 = none); its prompts come from the run's environments that report a rubric part.")
    steps: int = Field(1, ge=1, le=100_000, description="Learner steps per round, each on freshly sampled prompts; the policy at the round's start is the DPO reference.")
    tasks: int = Field(16, ge=1, le=1_000_000, description="Prompts per round step, each sampled rollout.group_size times; the best and worst sample of a prompt under the rubric score form its pair.")
    beta: float = Field(0.1, gt=0, le=100, description="DPO inverse temperature beta.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative-DPO label smoothing (0 = plain DPO).")
    rubric_weights: dict[str, float] = Field(
        default_factory=lambda: {"informative": 1.0, "constraints": 1.0, "errors": -1.0, "hallucinated": -1.0, "verbosity": -0.5},
        description="Signed weight per reward part in [0, 1]: positive rewards the property, negative penalises it (the defaults are the instructions family's parts).")
    margin: float = Field(0.0, ge=0, le=1e6, description="Minimum score gap between chosen and rejected.")
    pairing: Literal["best_worst", "best_each"] = Field("best_worst", description="best_worst: one pair per prompt, its best and its worst sample; best_each: the best against every sample scoring below it by more than `margin` (the policy's common reply included, so the update reaches what greedy decoding gives).")
    focus_decay: float = Field(0.9, ge=0, lt=1, description="EMA decay of per-rubric saturation.")
    focus_floor: float = Field(0.1, ge=0, le=1, description="Weight a fully saturated rubric dimension keeps (relative).")
    lr: float | None = Field(None, gt=0, le=1.0, description="Learning rate of DPO steps (None = the RL learning rate).")


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
    off_policy: OffPolicySpec = Field(default_factory=KPopMaskSpec, description="Train/inference mismatch correction.")
    distill: DistillSpec = Field(default_factory=DistillSpec, description="Shortest-correct-response distillation ('distill' mode).")
    preference: PreferenceSpec = Field(default_factory=PreferenceSpec, description="Bidirectional preference alignment ('dpo' mode).")
    warmup_steps: int = Field(0, ge=0, le=10**7, description="Linear LR warm-up steps, then constant (warmup-stable; merge with WSM instead of decaying).")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate for RL steps.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas.")
    grad_clip: float = Field(1.0, ge=0, le=1e6, description="Gradient-norm clip (0 = off).")
    expert_bias_gamma: float = Field(1e-3, ge=0, le=1.0, description="Aux-loss-free MoE balancing: after every optimiser step each router's expert biases move by this times sign(mean load - load) (DeepSeek-V3: 1e-3, later 1e-4; 0 = off). Models without MoE layers ignore it.")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training precision.")
    micro_batch_size: int = Field(16, ge=1, le=65536, description="Sequences per forward/backward pass.")
    minibatches: int = Field(1, ge=1, le=4096, description="PPO mini-batches per RL step: the batch is split into this many, each trained with its own optimiser step against the policy at the start of the step (π_old, recomputed once), so the clipped ratio can leave 1 (1 = one optimiser step per batch).")
    epochs: int = Field(1, ge=1, le=64, description="Passes over an RL step's mini-batches (PPO epochs).")
    fresh_rl_moments: bool = Field(False, description="Zero Adam's moments when RL follows the cold start. Off, RL inherits the cold start's moments: its gradients are several times larger than RL's, so the second moments (decaying by betas[1] per update) keep the first hundreds of RL updates well below learner.lr, which also keeps parameters RL barely touches still; on, RL starts like a run of its own and wants a smaller learner.lr (quickstart: 3e-4 learns, 1e-3 breaks the tool-call format within 5 steps).")
    num_ranks: int = Field(1, ge=1, le=65536, description="Data-parallel learner ranks (Ray actors).")
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs per learner rank.")
    threads: int | None = Field(None, ge=1, le=1024, description="Torch threads per rank (unset: the machine's cores / ranks, less the engines' reserved CPUs when KPop overlaps generation and training, eta > 0).")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per learner rank.")
    quant: QuantSpec = Field(default_factory=QuantSpec, description="FP4 (UFP4/NVFP4/MXFP4) training GEMMs; off by default.")


def settings_need_rounds(spec: LearnerSpec) -> LearnerSpec:
    """`learner.distill` / `learner.preference` settings are used only by their rounds: a section
    changed from its defaults while its `every` is 0 would be accepted and never used."""
    for name, kind, default in (("distill", "distillation", DistillSpec()), ("preference", "preference", PreferenceSpec())):
        section = getattr(spec, name)
        if section.every:
            continue
        changed = sorted(k for k in type(section).model_fields if getattr(section, k) != getattr(default, k))
        if changed:
            raise ValueError(f"learner.{name}.{changed[0]} is set, but no {kind} round runs (learner.{name}.every is 0): "
                             f"set learner.{name}.every to run a round after every N-th RL step, or remove "
                             f"{', '.join(f'learner.{name}.{k}' for k in changed)}")
    if spec.preference.every and spec.zero_stage == 3:
        raise ValueError("learner.preference.every: preference rounds copy the policy as their DPO reference on every "
                         "rank, which ZeRO-3 shards; use learner.zero_stage 0-2 with preference rounds")
    return spec
