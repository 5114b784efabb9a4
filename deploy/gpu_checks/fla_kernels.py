"""GPU smoke check: flash-linear-attention's Lightning kernels against the CPU ops, at model size.

    python deploy/gpu_checks/fla_kernels.py [--batch 2] [--tokens 2048] [--heads 8] [--dim 128]

For mode chunk (training, prefill) and recurrent (decode), `lightning_attention` runs once with
backend "fla" on CUDA and once with backend "torch" on the CPU (kpop.models.ops), from the same
fp32 inputs and initial state; the loss mean(o^2) + mean(s^2) is backpropagated through both.
Pass: for the output o, the final state s and the gradients of q, k and v,

    max |gpu - cpu| / max |cpu| <= 5e-3           (Triton may run fp32 dots as TF32)

Prints one JSON line {"ok", "message", "modes": {mode: {errors, gpu_s, cpu_s}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

TOL = 5e-3


def inputs(b: int, t: int, h: int, d: int) -> tuple[torch.Tensor, ...]:
    from kpop.models.ops.decay import lightning_log_decay

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, t, h, d, generator=gen) * d**-0.5 for _ in range(3))
    s0 = torch.randn(b, h, d, d, generator=gen) * 0.1
    return q, k, v, lightning_log_decay(h, 1, 4).float(), s0


def run(tensors: tuple[torch.Tensor, ...], mode: str, backend: str, device: str) -> tuple[dict, float]:
    from kpop.models.ops.lightning import lightning_attention

    q, k, v, g, s0 = (x.to(device) for x in tensors)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    start = time.perf_counter()
    o, s = lightning_attention(*leaves, g, initial_state=s0, output_final_state=True, mode=mode, backend=backend)
    (o.float().pow(2).mean() + s.float().pow(2).mean()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    named = {"o": o, "state": s, **{f"d{n}": x.grad for n, x in zip("qkv", leaves)}}
    return {n: x.detach().float().cpu() for n, x in named.items()}, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    tensors = inputs(args.batch, args.tokens, args.heads, args.dim)
    modes, worst = {}, 0.0
    for mode in ("chunk", "recurrent"):
        run(tensors, mode, "fla", "cuda")  # warm-up: Triton compiles on first use
        gpu, gpu_s = run(tensors, mode, "fla", "cuda")
        cpu, cpu_s = run(tensors, mode, "torch", "cpu")
        errors = {n: float((gpu[n] - cpu[n]).abs().max() / cpu[n].abs().max().clamp_min(1e-12)) for n in cpu}
        worst = max(worst, *errors.values())
        modes[mode] = {"errors": errors, "gpu_s": round(gpu_s, 4), "cpu_s": round(cpu_s, 3)}
    ok = worst <= TOL
    shape = f"B={args.batch} T={args.tokens} H={args.heads} d={args.dim}"
    print(json.dumps({"ok": ok, "message": f"fla vs CPU Lightning ops ({shape}): worst relative error {worst:.2e} "
                      f"({'<=' if ok else '>'} {TOL:g})", "modes": modes}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
