"""The built-in engine's decode steps with its native kernels (kpop.rollout.builtin.native) against
the same steps on torch's ops, side by side in one process.

    python benchmarks/native_kernels.py [--models hybrid,llama] [--batches 1,16,64] [--pairs 6]
                                        [--max-tokens 64] [--threads 2] [--dtype float32]

Models: the medium presets of benchmarks/engine.py (random init, built in a temp folder, loaded
in `--dtype`: float32 or bfloat16).
For each model and batch, `--pairs` pairs of generations (8-token prompts, `--max-tokens` tokens
each, temperature 1), the two forms alternating within each pair (kernels on, then off under
`native.switched_off()`), so a change in the machine's load hits both. Reported: the median
decode-step time of each form (prefill excluded) and the median and range of the pairwise ratio
on/off. The pairwise ratio is the figure to trust on a shared box; the absolute times move with it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from engine import LLAMA_SIZES, prompts


def step_ms(model, batch: int, max_tokens: int) -> float:
    """Mean decode-step time (ms) of one generation of `batch` rows through the engine's scheduler."""
    from kpop.rollout.builtin.adapters import adapter_for
    from kpop.rollout.builtin.sampling import new_generator
    from kpop.rollout.builtin.scheduler import Scheduler, Sequence
    from kpop.rollout.engine import SamplingParams

    scheduler = Scheduler(adapter_for(model), max_batch=batch, max_model_len=512)
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens)
    for i, prompt in enumerate(prompts(batch)):
        scheduler.submit(Sequence(f"r{i}", prompt, params, new_generator(i), frozenset(), arrival=i))
    scheduler.step(0)  # the prefill
    start, steps = time.perf_counter(), 0
    while scheduler.has_work():
        scheduler.step(0)
        steps += 1
    return (time.perf_counter() - start) / steps * 1e3


def compare(model, batch: int, pairs: int, max_tokens: int) -> tuple[float, float, float, float, float]:
    """(median ms on, median ms off, median ratio, min ratio, max ratio) over `pairs` pairs."""
    from kpop.rollout.builtin import native

    step_ms(model, batch, 4)  # warm-up: builds the kernels, packs the weights
    with native.switched_off():
        step_ms(model, batch, 4)
    on, off = [], []
    for _ in range(pairs):
        on.append(step_ms(model, batch, max_tokens))
        with native.switched_off():
            off.append(step_ms(model, batch, max_tokens))
    ratios = [a / b for a, b in zip(on, off)]
    return statistics.median(on), statistics.median(off), statistics.median(ratios), min(ratios), max(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="hybrid,llama")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    import torch

    from kpop.rollout.builtin import native
    from kpop.rollout.builtin.tiny_models import tiny_hybrid_dir, tiny_llama_dir
    from kpop.rollout.builtin.weights import load_model

    if not native.available():
        raise SystemExit("the native kernels could not be built here (see the warning above): nothing to compare")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            if kind == "hybrid":
                model_dir = tiny_hybrid_dir(Path(tmp) / kind, preset="medium")
            else:
                model_dir = tiny_llama_dir(Path(tmp) / kind, **LLAMA_SIZES["medium"])
            model = load_model(model_dir, "cpu", getattr(torch, args.dtype))
            for batch in [int(b) for b in args.batches.split(",")]:
                row = (kind, batch, *compare(model, batch, args.pairs, args.max_tokens))
                print(f"  medium {kind} {args.dtype} batch {batch}: kernels {row[2]:.2f} ms, torch ops {row[3]:.2f} ms a step, "
                      f"ratio {row[4]:.3f} ({row[5]:.3f}-{row[6]:.3f})", flush=True)
                rows.append(row)
    print(f"\n{'model':<8}| {'batch':>5} | {'kernels ms':>10} | {'torch ms':>8} | {'ratio':>6} | {'range':<13}")
    print("-" * 62)
    for kind, batch, on, off, ratio, low, high in rows:
        print(f"{kind:<8}| {batch:>5} | {on:>10.2f} | {off:>8.2f} | {ratio:>6.3f} | {low:.3f}-{high:.3f}")


if __name__ == "__main__":
    main()
