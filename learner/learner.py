"""The learner: one DeepSpeed rank that trains the policy on batches of Trajectories.

Contract:
- `train_step(trajectories, mode)` runs exactly one optimiser step and increments the policy
  version (a step with no token to train on changes no weight and no optimiser state, but still
  advances the version). Modes: "sft" (cross-entropy on
  generated tokens, cold start), "rl" (the spec's objective
  GRPO/GSPO/LPO with group-normalised advantages and the spec's off-policy correction), "distill"
  (SFT on the shortest correct sample per prompt), "dpo" (preference pairs from the focus-weighted
  signed rubric score against a frozen reference copy, kept on CPU: the starting model, or the
  policy at the last `reset_reference()` (a preference round resets it at its start).
  Batch-level decisions live in plan.py; `train_plan` runs one rank's share (used by LearnerGroup).
- Every token's trainer log-prob is recomputed here. In "rl", p_old = the policy at the start of
  the step (θ_old, decoupled PPO): with one mini-batch and one epoch the weights do not move
  between micro-batches, so the detached log-probs of the training forward *are* the recomputation
  at θ_old (no second forward); with `minibatches` x `epochs` > 1 optimiser steps per RL step,
  p_old is recomputed once, without gradients, before the first update, and the clipped ratio
  p / p_old leaves 1 as the mini-batches move the weights. q = the engine's behaviour log-prob; it
  feeds only the off-policy correction (p_old against q). Mismatch metrics (mean |log p_old -
  log q|, masked fraction) are returned every RL step, over the trained rows; `clipped_fraction`
  is the share of (token, update) pairs whose ratio was clipped; `grad_norm` the largest of the
  step's updates. The version grows by one per `train_step`, whatever its optimiser step count.
- With `fresh_rl_moments` on, the first "rl" step after an "sft" step zeroes Adam's moments (and
  its step count, so bias correction starts over): RL starts like a run of its own. The mode
  of the last step is part of the checkpoint, so a run resumed at the end of its cold start does
  the same.
- A round's steps ("distill", "dpo") run on Adam moments of their own: the first step of a round
  sets the current moments aside and zeroes them; the first step after it (or `save`) puts them
  back, so RL continues on its own moments and never applies a round's momentum at its own rate.
- Gradient accumulation is unmanaged (deepspeed_engine.py): each micro-batch's loss is normalised
  by the whole batch's token (or pair) count and multiplied by the world size, because DeepSpeed
  averages gradients over ranks; the sum over micro-batches and ranks is the batch loss.
- After every optimiser step the MoE routers' expert biases move towards balanced load (balance.py,
  `expert_bias_gamma`); `moe_load` reports max / mean load per MoE layer (empty without routers).
- A model with multi-token-prediction layers (the hybrid's `num_nextn_predict_layers`) trains them:
  "sft", "distill" and "rl" steps add w · L_mtp (objectives/mtp.py: on the same tokens as the main
  loss, from the same forward; in "rl" with the trunk detached, so only the MTP layers learn from
  it), w = the model config's `mtp_loss_scaling_factor` (0: computed for the metric, not trained).
  `loss` stays the objective's; `mtp` reports {"mtp_loss": L_mtp} (empty without MTP layers and in
  "dpo"). A model without MTP layers runs exactly the computation it ran before.
- `publish()` returns the weights as a WeightUpdate (HF names; ZeRO-3 shards gathered, collective;
  ranks other than 0 return an update with no chunks). `save(dir)` / `load(dir)`: checkpoint.py.
Runs in a Ray actor (actor.py, group.py) or in-process for tests.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kpop.learner.balance import ExpertBalancer
from kpop.learner.batch import Batch, collate
from kpop.learner.checkpoint import load_checkpoint, save_checkpoint
from kpop.learner.deepspeed_engine import RankInfo, build_engine, init_distributed
from kpop.learner.logprobs import token_and_mtp_logprobs, token_logprobs
from kpop.learner.objectives.grpo import grpo_loss
from kpop.learner.objectives.gspo import gspo_loss
from kpop.learner.objectives.lpo import lpo_loss
from kpop.learner.objectives.mtp import mtp_loss
from kpop.learner.objectives.offpolicy import correction_weights, mismatch_sums
from kpop.learner.objectives.preference import FocusState, dpo_loss
from kpop.learner.objectives.sft import sft_loss
from kpop.learner.plan import StepPlan, micro_batch_rows, plan_step, shard
from kpop.learner.segmentation import DEFAULT_PUNCTUATION, sentence_units, tokenizer_decoder
from kpop.quant.gemm import gemm_counts
from kpop.rollout.engine import WeightUpdate
from kpop.spec.learner import LearnerSpec
from kpop.trajectory import Trajectory

PUBLISH_CHUNK_BYTES = 64 << 20
ROUND_MODES = ("distill", "dpo")      # the training rounds' step modes (kpop.stages.rounds)


@dataclass(frozen=True)
class StepMetrics:
    mode: str
    version: int
    loss: float
    grad_norm: float
    tokens: int              # generated tokens trained on
    sequences: int           # trajectories handed to the step
    mismatch: float          # mean |log p_trainer - log p_engine| over generated tokens ("rl")
    clipped_fraction: float
    step_s: float
    masked_fraction: float = 0.0   # share of generated tokens the off-policy correction zeroed ("rl")
    pair_accuracy: float = 0.0     # share of preference pairs with positive implicit reward margin ("dpo")
    pairs: int = 0                 # preference pairs trained on ("dpo")
    moe_load: dict[str, float] = field(default_factory=dict)  # balance.ExpertBalancer.metrics() of the step
    mtp: dict[str, float] = field(default_factory=dict)       # {"mtp_loss": L_mtp} with MTP layers (objectives/mtp.py)
    quant: dict[str, int] = field(default_factory=dict)       # 4-bit GEMMs run in the step, with learner.quant.recipe
    env_nll: dict[str, float] = field(default_factory=dict)   # "sft", "distill": summed token NLL per environment
    env_tokens: dict[str, int] = field(default_factory=dict)  # ... and the tokens it sums over

    def loss_by_env(self) -> dict[str, float]:
        """{"loss/<env>": mean token cross-entropy of that environment's rows}: a mixed cold start's
        per-family loss (the step's `loss` is their token-weighted mean)."""
        return {f"loss/{env}": self.env_nll[env] / n for env, n in sorted(self.env_tokens.items()) if n}


@dataclass
class _Sums:
    loss: float = 0.0
    clipped: float = 0.0
    mismatch: float = 0.0
    masked: float = 0.0
    correct_pairs: float = 0.0
    mtp: float = 0.0
    env_nll: dict[str, float] = field(default_factory=dict)
    env_tokens: dict[str, int] = field(default_factory=dict)

    def add_env_nll(self, logp: torch.Tensor, mask: torch.Tensor, rows: list[Trajectory]) -> None:
        nll, count = (-(logp.detach() * mask).sum(dim=1)).tolist(), mask.sum(dim=1).tolist()
        for row, n, c in zip(rows, nll, count, strict=True):
            if c:
                self.env_nll[row.env_id] = self.env_nll.get(row.env_id, 0.0) + n
                self.env_tokens[row.env_id] = self.env_tokens.get(row.env_id, 0) + int(c)


class Learner:
    def __init__(self, model_dir: str, spec: LearnerSpec, seed: int = 0, rank: RankInfo | None = None,
                 sft_lr: float | None = None, num_threads: int | None = None, rl_threads: int | None = None) -> None:
        from transformers import AutoModelForCausalLM

        import kpop.models.hybrid  # noqa: F401 (registers bailing_hybrid with the Auto classes)
        from kpop.models.tokenizer import load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        # "rl" steps may overlap generation on shared cores (KPop): they can use fewer threads.
        self.threads = {"rl": rl_threads or torch.get_num_threads(), "other": torch.get_num_threads()}
        rank = rank or RankInfo()
        init_distributed(rank)
        torch.manual_seed(seed)
        self.spec, self.rank, self.model_dir = spec, rank, str(model_dir)
        self.rl_lr, self.sft_lr = spec.lr, sft_lr or spec.lr
        self.tokenizer = load_tokenizer(self.model_dir)
        self.decode = tokenizer_decoder(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        # multi-token-prediction layers (objectives/mtp.py): the hybrid's config names them; a Llama has none
        self.mtp_layers = int(getattr(model.config, "num_nextn_predict_layers", 0) or 0)
        self.mtp_weight = float(getattr(model.config, "mtp_loss_scaling_factor", 0.0) or 0.0)
        if spec.quant.recipe != "bf16":
            from kpop.quant import apply_spec

            apply_spec(model, spec.quant)
        self.engine, self.optimizer, self.grad_norm = build_engine(model, spec, spec.lr)
        self.balancer = ExpertBalancer(self.engine.module, spec.expert_bias_gamma)  # MoE routers, if any
        self.version, self.steps = 0, 0
        self.last_mode: str | None = None
        self._set_aside: dict[int, dict] | None = None     # the main phase's Adam state during a round
        self._set_aside_mode: str | None = None
        self.focus = FocusState()
        self._reference = None

    # ---- training -------------------------------------------------------------------------
    def train_step(self, trajectories: list[Trajectory], mode: str) -> StepMetrics:
        plan = plan_step(trajectories, mode, self.spec, self.focus)
        return self.train_plan(shard(plan, 1, self.spec.micro_batch_size)[0])

    def train_plan(self, plan: StepPlan) -> StepMetrics:
        """One rank's share of a step (all ranks call this with their shard, then step together)."""
        t0 = time.perf_counter()
        torch.set_num_threads(self.threads["rl" if plan.mode == "rl" else "other"])
        self.engine.train()
        self.focus = plan.focus
        if plan.trained_tokens == 0 or (plan.mode == "dpo" and plan.num_pairs == 0):
            # nothing to learn from (e.g. no correct sample, every group's samples scored alike, no
            # preference pair): no optimiser step, since Adam would still move the weights along
            # its old moments. The version still advances (same weights, next number): one step,
            # one policy version, which the KPop scheduler's staleness arithmetic relies on.
            self.version += 1
            return StepMetrics(plan.mode, self.version, 0.0, 0.0, 0, plan.sequences if self.rank.rank == 0 else 0,
                               0.0, 0.0, time.perf_counter() - t0)
        self._switch_moments(plan.mode)
        if plan.mode == "rl" and self.last_mode == "sft" and self.spec.fresh_rl_moments:
            self._zero_moments()
        self.last_mode = plan.mode
        self._set_lr(plan.mode)
        gemms_before = gemm_counts()
        pieces = [list(self._micro_batches(plan, rows)) for rows in plan.pieces]
        old = self._proximal_logprobs(pieces) if plan.epochs * len(pieces) > 1 else None
        sums, norms = _Sums(), []
        for epoch in range(plan.epochs):
            for k, piece in enumerate(pieces):
                for j, (micro, adv, rows) in enumerate(piece):
                    logp_old = old[k][j] if old is not None else None
                    loss, aux = self._micro_loss(plan, micro, adv, rows, sums if epoch == 0 else _Sums(), logp_old, sums)
                    total = loss if aux is None else loss + aux
                    self.engine.backward(total * plan.world_size, scale_wrt_gas=False)
                    sums.loss += float(loss.detach())
                self.engine.step()
                self.balancer.after_step()
                self.steps += 1
                norms.append(self.grad_norm())
        self.version += 1
        n = max(plan.trained_tokens, 1)
        return StepMetrics(plan.mode, self.version, sums.loss / plan.epochs, max(norms),
                           sum(t.num_generated for t in plan.rows), plan.sequences if self.rank.rank == 0 else 0,
                           sums.mismatch / n, sums.clipped / (n * plan.epochs), time.perf_counter() - t0,
                           sums.masked / n, sums.correct_pairs / max(plan.num_pairs, 1),
                           plan.num_pairs if self.rank.rank == 0 else 0, moe_load=self.balancer.metrics(),
                           mtp={"mtp_loss": sums.mtp} if self._trains_mtp(plan.mode) else {},
                           quant=self._quant_gemms(gemms_before), env_nll=sums.env_nll, env_tokens=sums.env_tokens)

    def _quant_gemms(self, before: dict[str, int]) -> dict[str, int]:
        if self.spec.quant.recipe == "bf16":
            return {}
        ran = {g: n - before.get(g, 0) for g, n in gemm_counts().items()}
        return {"quant_gemms": sum(ran.values()), **{f"quant_gemms/{g}": n for g, n in sorted(ran.items())}}

    def _switch_moments(self, mode: str) -> None:
        """A round (distill, dpo) runs on Adam moments of its own, from zero; leaving it puts back
        the moments it set aside. Carried over, a round's momentum (gradients ~20x RL's) would be
        applied by the next RL updates at RL's learning rate: in a flagship run with rounds after
        RL step 40 of 48, the 8 RL steps that followed took held-out instructions from 0.88 to 0.03."""
        entering, leaving = mode in ROUND_MODES, self.last_mode in ROUND_MODES
        if entering and mode == self.last_mode:
            return
        if entering and not leaving:
            self._set_aside_mode = self.last_mode
            self._set_aside = {id(param): {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                               for param, state in self._adam_state().items()}
        if leaving and not entering:
            self.close_round()
        if entering:
            self._zero_moments()

    def close_round(self) -> None:
        """Restore the moments set aside when the current round began (no-op outside a round).
        `save` calls it, so a checkpoint holds the main phase's moments, never a round's."""
        if self._set_aside is None:
            return
        for param, state in self._adam_state().items():
            saved = self._set_aside.get(id(param), {})
            for key, value in state.items():
                if torch.is_tensor(value) and key in saved:
                    value.copy_(saved[key])
                elif torch.is_tensor(value):
                    value.zero_()
                else:
                    state[key] = saved.get(key, 0)
        self.last_mode, self._set_aside = self._set_aside_mode, None

    def _adam_state(self) -> dict:
        """The torch optimiser's per-parameter state (under DeepSpeed's wrapper, if any)."""
        return getattr(self.optimizer, "optimizer", self.optimizer).state

    def _zero_moments(self) -> None:
        """Adam restarts: first and second moments and step count to zero, in place (DeepSpeed's
        ZeRO optimisers keep references to these tensors)."""
        for state in self._adam_state().values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    value.zero_()
                elif key == "step":
                    state[key] = 0

    def _proximal_logprobs(self, pieces) -> list[list[torch.Tensor]]:
        """Log-probs of every micro-batch at the weights the step starts from (θ_old), no gradients."""
        with torch.no_grad():
            return [[token_logprobs(self.engine, micro.input_ids, micro.attention_mask) for micro, _, _ in piece]
                    for piece in pieces]

    def lr_for(self, mode: str) -> float:
        """Mode's base learning rate times the linear warm-up factor (then constant: warmup-stable)."""
        base = {"sft": self.sft_lr, "rl": self.rl_lr, "distill": self.spec.distill.lr or self.sft_lr,
                "dpo": self.spec.preference.lr or self.rl_lr}[mode]
        warm = self.spec.warmup_steps
        return base * (min(1.0, (self.steps + 1) / warm) if warm else 1.0)

    def _set_lr(self, mode: str) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_for(mode)

    def _micro_batches(self, plan: StepPlan, indices: list[int]):
        """(Batch on the engine's device, advantages [B], rows) of one mini-batch's rows; dummy
        all-padding batches fill up to `plan.micro_batches` so every rank runs the same number of
        forwards."""
        size = micro_batch_rows(plan.mode, self.spec.micro_batch_size)
        count = max(plan.micro_batches, -(-len(indices) // size))
        for i in range(count):
            chunk = indices[i * size:(i + 1) * size]
            rows, adv = [plan.rows[j] for j in chunk], [plan.advantages[j] for j in chunk]
            if not rows:
                rows, adv = [self._padding_row()], [0.0]
            batch = collate(rows, self.pad_id).to(self.engine.device)
            yield batch, torch.tensor(adv, dtype=torch.float32, device=self.engine.device), rows

    def _padding_row(self) -> Trajectory:
        return Trajectory("padding", "padding", [self.pad_id] * 2, [0, 0], [0.0, 0.0], [-1, -1])

    def _trains_mtp(self, mode: str) -> bool:
        return self.mtp_layers > 0 and mode != "dpo"

    def _micro_loss(self, plan: StepPlan, micro: Batch, adv: torch.Tensor, rows: list[Trajectory],
                    sums: _Sums, logp_old: torch.Tensor | None = None,
                    clip_sums: _Sums | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(objective loss, weighted MTP term or None). `sums` collects the per-batch metrics (the
        caller passes a scratch one after the first epoch); `clip_sums` the clipped-token count,
        which every update adds to."""
        if self._trains_mtp(plan.mode):
            # "rl": the MTP term reaches only the MTP layers (objectives/mtp.py)
            logp, mtp_logp = token_and_mtp_logprobs(self.engine, micro.input_ids, micro.attention_mask,
                                                    "layers" if plan.mode == "rl" else "all")
            aux = mtp_loss(mtp_logp, micro.loss_mask, plan.trained_tokens)
            sums.mtp += float(aux.detach())
            aux = aux * self.mtp_weight if self.mtp_weight else None   # weight 0: no gradient at all
        else:
            logp, aux = token_logprobs(self.engine, micro.input_ids, micro.attention_mask), None
        if plan.mode in ("sft", "distill"):
            sums.add_env_nll(logp, micro.loss_mask, rows)
            return sft_loss(logp, micro.loss_mask, plan.num_tokens), aux
        if plan.mode == "dpo":
            return self._dpo_loss(plan, micro, logp, sums), aux
        # one optimiser step per batch: the weights are θ_old until step(), so the detached
        # training forward is the recomputation at θ_old
        old = logp.detach() if logp_old is None else logp_old
        return self._rl_loss(plan, micro, logp, old, adv, rows, sums, clip_sums or sums), aux

    def _rl_loss(self, plan: StepPlan, micro: Batch, logp: torch.Tensor, logp_old: torch.Tensor,
                 adv: torch.Tensor, rows: list[Trajectory], sums: _Sums, clip_sums: _Sums) -> torch.Tensor:
        obj, mask, logq = self.spec.objective, micro.loss_mask, micro.behaviour_logprobs
        corr = correction_weights(self.spec.off_policy, logp_old, logq, mask)
        if obj.type == "lpo":
            units = self._sentence_units(rows, obj.punctuation, logp.shape[1]).to(logp.device)
            loss, stats = lpo_loss(logp, logp_old, adv, units, obj.clip_eps, plan.num_tokens, corr.weights)
        elif obj.type == "gspo":
            loss, stats = gspo_loss(logp, logp_old, adv, mask, obj.clip_eps, plan.num_tokens, corr.weights)
        else:
            loss, stats = grpo_loss(logp, logp_old, adv, mask, obj.clip_eps, plan.num_tokens, corr.weights)
        mm = mismatch_sums(logp_old, logq, mask, corr.masked)
        clip_sums.clipped += stats.clipped_fraction * float(mask.sum())
        sums.mismatch += mm.abs_logratio
        sums.masked += mm.masked
        return loss

    def _sentence_units(self, rows: list[Trajectory], punctuation: str, width: int) -> torch.Tensor:
        """[B, width] sentence index of each target token (shifted like Batch.targets), -1 elsewhere."""
        out = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, t in enumerate(rows):
            units = sentence_units(t.token_ids, t.loss_mask, self.decode, punctuation or DEFAULT_PUNCTUATION)[1:]
            out[i, :len(units)] = torch.tensor(units, dtype=torch.long)
        return out

    def _dpo_loss(self, plan: StepPlan, micro: Batch, logp: torch.Tensor, sums: _Sums) -> torch.Tensor:
        mask = micro.loss_mask
        if plan.num_pairs == 0 or mask.sum() == 0:
            return (logp * 0).sum()
        seq = (logp * mask).sum(dim=1)
        ref = (self._reference_logprobs(micro) * mask).sum(dim=1)
        pref = self.spec.preference
        loss, acc = dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], pref.beta, plan.num_pairs,
                             pref.label_smoothing)
        sums.correct_pairs += acc * (seq.shape[0] // 2)
        return loss

    def set_sft_lr(self, lr: float) -> float:
        """The base learning rate of "sft" steps (and of distill steps without their own) becomes
        `lr`; returns the previous one. Not part of a checkpoint: the cold start sets it back."""
        old, self.sft_lr = self.sft_lr, lr
        return old

    def reset_reference(self) -> int:
        """The current weights become the frozen DPO reference (a CPU copy); returns the version.
        Every rank holds the whole model below ZeRO-3 (the spec refuses preference rounds there)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        if self.spec.zero_stage == 3:
            raise ValueError("reset_reference needs the whole model on every rank; ZeRO-3 shards it")
        state = {k: v.detach().to("cpu", torch.float32) for k, v in self.engine.module.state_dict().items()}
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.model_dir), dtype=torch.float32)
        model.load_state_dict(state)
        self._reference = model.eval().requires_grad_(False)
        return self.version

    def _reference_logprobs(self, micro: Batch) -> torch.Tensor:
        """Log-probs under the frozen reference (a CPU copy; the starting model unless
        `reset_reference` chose another, loaded on the first "dpo" step)."""
        if self._reference is None:
            from transformers import AutoModelForCausalLM

            self._reference = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
            self._reference.requires_grad_(False)
        with torch.no_grad():
            ref = token_logprobs(self._reference, micro.input_ids.cpu(), micro.attention_mask.cpu())
        return ref.to(micro.input_ids.device)

    # ---- weights, checkpoints, lifecycle ----------------------------------------------------
    def ready(self) -> int:
        """Returns the policy version once the engine is built (a cheap liveness probe)."""
        return self.version

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model under HF names on rank 0 (ZeRO-3 shards gathered; collective); None elsewhere."""
        if self.spec.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        if self.rank.rank != 0:
            return None
        return {k: v.detach().contiguous() for k, v in self.engine.module.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.full_state_dict() or {}

    def publish(self) -> WeightUpdate:
        from kpop.rollout.weight_sync import state_dict_to_chunks

        state = self.full_state_dict()
        chunks = state_dict_to_chunks(state, max_chunk_bytes=PUBLISH_CHUNK_BYTES) if state is not None else []
        return WeightUpdate(self.version, chunks)

    def save(self, directory: str | Path) -> Path:
        self.close_round()
        return save_checkpoint(self, directory)

    def load(self, directory: str | Path) -> int:
        """Exact resume from a `save` folder (same spec and world size); returns the restored version."""
        return load_checkpoint(self, directory)

    def focus_state(self) -> FocusState:
        return self.focus

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def metrics_dict(m: StepMetrics) -> dict:
    return asdict(m)
