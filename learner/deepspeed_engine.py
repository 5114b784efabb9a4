"""Build a DeepSpeed engine for a Hugging Face causal LM from the `learner:` spec.

One process = one data-parallel rank. Gradient accumulation is *unmanaged*: the caller runs
`backward` on each micro-batch with a loss already normalised by the whole batch's token count,
then calls `step()` once, so RL batches of any size map onto one optimiser step. Under ZeRO-2/3 each
backward (and under ZeRO-3 each forward) is collective, so all ranks run the same number of
micro-batches (plan.py pads with empty ones).
On CPU the collective backend is gloo; on GPU, NCCL.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from kpop.spec.learner import LearnerSpec


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(info: RankInfo) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update(MASTER_ADDR=info.master_addr, MASTER_PORT=str(info.master_port or free_port()),
                      RANK=str(info.rank), WORLD_SIZE=str(info.world_size), LOCAL_RANK="0")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/kpop/torch_extensions"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def deepspeed_config(spec: LearnerSpec, lr: float) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        # ZeRO-0 in FP32 hands clipping to GradNormProbe (DeepSpeed would clip but not report the norm).
        "gradient_clipping": 0.0 if plain_fp32(spec) else spec.grad_clip,
        "zero_optimization": {"stage": spec.zero_stage},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if spec.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def plain_fp32(spec: LearnerSpec) -> bool:
    return spec.zero_stage == 0 and spec.precision == "fp32"


class GradNormProbe:
    """Pre-step hook on the torch optimiser (ZeRO-0, FP32): the gradients are already all-reduced
    there; it records their global 2-norm and clips them to `max_norm` (0 = no clipping)."""

    def __init__(self, optimizer, max_norm: float) -> None:
        self.max_norm, self.norm = max_norm, 0.0
        optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs) -> None:
        import torch

        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        limit = self.max_norm if self.max_norm > 0 else float("inf")
        self.norm = float(torch.nn.utils.clip_grad_norm_(params, limit))


def build_engine(model, spec: LearnerSpec, lr: float):
    """Wrap `model` in a DeepSpeed engine with an AdamW optimiser at learning rate `lr`.
    Returns (engine, optimizer, grad_norm): grad_norm() is the last step's pre-clip gradient norm."""
    import deepspeed
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay)
    probe = GradNormProbe(optimizer, spec.grad_clip) if plain_fp32(spec) else None
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=deepspeed_config(spec, lr))

    def grad_norm() -> float:
        return probe.norm if probe is not None else float(engine.get_global_grad_norm() or 0.0)
    return engine, optimizer, grad_norm
