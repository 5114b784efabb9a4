"""Prefill time and decode-state memory vs sequence length: Lightning Attention vs softmax attention.

Both run at equal width (H heads x d dims, batch 1, float32, CPU by default):
  * Lightning: KPop's chunked form (`kpop.models.ops.lightning`, chunk 64) for prefill; its decode
    state is H x d x d floats whatever the length.
  * Softmax: torch `scaled_dot_product_attention(is_causal=True)`; its decode state is the KV
    cache, 2 x T x H x d floats.
Prints a table and the crossover length: the shortest measured length from which Lightning's
prefill is faster (the whole range stays ascending past it), or "none in range".

    python benchmarks/model_scaling.py --lengths 1024 2048 4096 8192 16384 --heads 8 --head-dim 64
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kpop.models.ops.decay import lightning_log_decay
from kpop.models.ops.lightning import lightning_attention


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(T: int, heads: int, d: int, repeats: int, device: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, T, heads, d, generator=gen).to(device) for _ in range(3))
    g = lightning_log_decay(heads, 0, 2).to(device)
    with torch.no_grad():
        lin = _time(lambda: lightning_attention(q, k, v, g, mode="chunk", chunk_size=64), repeats)
        qs, ks, vs = (x.transpose(1, 2) for x in (q, k, v))
        sdpa = _time(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True), repeats)
    return {"T": T, "lightning_s": lin, "sdpa_s": sdpa,
            "lightning_state_mib": heads * d * d * 4 / 2**20, "kv_cache_mib": 2 * T * heads * d * 4 / 2**20}


def crossover(rows: list[dict[str, float]]) -> int | None:
    for i, row in enumerate(rows):
        if all(r["lightning_s"] < r["sdpa_s"] for r in rows[i:]):
            return int(row["T"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"width: {args.heads} heads x {args.head_dim} dims, batch 1, float32, {args.device}, {args.threads} threads")
    print(f"{'T':>6} | {'lightning prefill s':>19} | {'sdpa prefill s':>14} | {'lightning state MiB':>19} | {'kv cache MiB':>12}")
    rows = []
    for T in args.lengths:
        row = measure(T, args.heads, args.head_dim, args.repeats, args.device)
        rows.append(row)
        print(f"{T:>6} | {row['lightning_s']:>19.4f} | {row['sdpa_s']:>14.4f} | {row['lightning_state_mib']:>19.3f} | {row['kv_cache_mib']:>12.3f}", flush=True)
    first, last = rows[0], rows[-1]
    growth = last["T"] / first["T"]
    print(f"time growth over x{growth:.0f} length: lightning x{last['lightning_s'] / first['lightning_s']:.1f}, "
          f"sdpa x{last['sdpa_s'] / first['sdpa_s']:.1f}")
    cross = crossover(rows)
    print(f"crossover length (lightning prefill faster from here on): {cross if cross else 'none in range'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
