"""The learner: one DeepSpeed rank that trains the policy on batches of Trajectories.

Contract:
- `train_step(trajectories, mode)` runs one optimiser step on the whole batch ("sft": cross-entropy
  on generated tokens; "rl": the spec's objective with group-normalised advantages) and increments
  the policy version. Every token's trainer log-prob is recomputed here; the behaviour log-probs
  carried by the Trajectories only feed the mismatch metrics (and off-policy corrections).
- `publish()` returns the current weights as a WeightUpdate for the engines (HF parameter names).
- `save(dir)` writes a Hugging Face checkpoint (config, safetensors, tokenizer) plus the optimiser
  state, so the folder is servable as it is.
Runs in a Ray actor (see learner/actor.py) or in-process for tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from kpop.learner.advantages import group_advantages
from kpop.learner.batch import collate, split
from kpop.learner.deepspeed_engine import RankInfo, build_engine, init_distributed
from kpop.learner.logprobs import token_logprobs
from kpop.learner.objectives.grpo import grpo_loss
from kpop.learner.objectives.sft import sft_loss
from kpop.rollout.engine import WeightUpdate
from kpop.spec.learner import LearnerSpec
from kpop.trajectory import Trajectory


@dataclass(frozen=True)
class StepMetrics:
    mode: str
    version: int
    loss: float
    grad_norm: float
    tokens: int
    sequences: int
    mismatch: float          # mean |log p_trainer - log p_engine| over generated tokens
    clipped_fraction: float
    step_s: float


class Learner:
    def __init__(self, model_dir: str, spec: LearnerSpec, seed: int = 0, rank: RankInfo = RankInfo(),
                 sft_lr: float | None = None, num_threads: int | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        init_distributed(rank)
        torch.manual_seed(seed)
        self.spec = spec
        self.rl_lr, self.sft_lr = spec.lr, sft_lr or spec.lr
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if spec.quant.recipe != "bf16":
            from kpop.quant import apply_spec

            apply_spec(model, spec.quant)
        self.engine, self.optimizer = build_engine(model, spec, spec.lr)
        self.version = 0

    def train_step(self, trajectories: list[Trajectory], mode: Literal["sft", "rl"]) -> StepMetrics:
        t0 = time.perf_counter()
        self.engine.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.sft_lr if mode == "sft" else self.rl_lr
        batch = collate(trajectories, self.tokenizer.pad_token_id)
        n_tokens = batch.num_tokens
        adv = group_advantages(batch.rewards, [t.group_id for t in trajectories], self.spec.objective.normalize_std)
        loss_sum = mismatch_sum = clipped_sum = 0.0
        mb = self.spec.micro_batch_size
        for i, micro in enumerate(split(batch, mb)):
            logp = token_logprobs(self.engine, micro.input_ids, micro.attention_mask)
            if mode == "sft":
                loss = sft_loss(logp, micro.loss_mask, n_tokens)
            else:
                loss, stats = grpo_loss(logp, logp.detach(), adv[i * mb:(i + 1) * mb], micro.loss_mask,
                                        self.spec.objective.clip_eps, n_tokens)
                clipped_sum += stats.clipped_fraction * float(micro.loss_mask.sum())
            self.engine.backward(loss, scale_wrt_gas=False)
            loss_sum += float(loss.detach())
            if mode == "rl":
                mismatch_sum += float(((logp.detach() - micro.behaviour_logprobs).abs() * micro.loss_mask).sum())
        self.engine.step()
        self.version += 1
        grad_norm = self.engine.get_global_grad_norm()
        return StepMetrics(mode, self.version, loss_sum, float(grad_norm or 0.0), n_tokens, len(trajectories),
                           mismatch_sum / max(n_tokens, 1), clipped_sum / max(n_tokens, 1), time.perf_counter() - t0)

    def ready(self) -> int:
        """Returns the policy version once the engine is built (a cheap liveness probe)."""
        return self.version

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.engine.module.state_dict().items()}

    def publish(self) -> WeightUpdate:
        from kpop.rollout.weight_sync import state_dict_to_chunks

        return WeightUpdate(self.version, state_dict_to_chunks(self.state_dict(), max_chunk_bytes=64 << 20))

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        self.engine.save_checkpoint(str(out / "trainer_state"), tag="state")
        (out / "learner.json").write_text(json.dumps({"version": self.version, "spec": self.spec.model_dump(mode="json")}))
        return out

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def metrics_dict(m: StepMetrics) -> dict:
    return asdict(m)
