"""Decode throughput of the built-in engine against HF `generate` and against vLLM.

    python benchmarks/engine.py [--batches 1,16,64] [--max-tokens 32] [--repeats 2] [--threads 1]
                                [--no-vllm] [--quick]

Models (random init, built locally in a temp folder):
- hybrid: the `tiny` preset of kpop.models.hybrid (Lightning + MLA, MoE);
- llama:  a Llama with hidden 128, 4 heads (head size 32, which vLLM-CPU accepts), 2 layers.
Rows: built-in vs HF `generate` on each model at each batch size, and vLLM (VLLMEngine,
in-process, kv_cache_gib 0.25) vs built-in on the Llama. Every side samples at temperature 1 from
the same prompts (8 tokens each) for --max-tokens tokens; tokens/s = generated tokens over the
wall time of the whole batch (prefill included), best of --repeats. The machine is shared, so
figures move with its load; the ratios, measured back to back, move less.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path


def prompts(batch: int) -> list[list[int]]:
    return [[1] + [(7 * i + j) % 200 + 4 for j in range(7)] for i in range(batch)]


def hf_tokens_per_s(model, batch: int, max_tokens: int) -> float:
    import torch

    ids = torch.tensor(prompts(batch))
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=max_tokens,
            min_new_tokens=max_tokens, pad_token_id=0, top_k=0,
        )
    return (out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - start)


async def engine_tokens_per_s(engine, batch: int, max_tokens: int) -> float:
    from kpop.rollout.engine import GenerationRequest, SamplingParams

    sp = SamplingParams(temperature=1.0, max_tokens=max_tokens)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(engine.generate(GenerationRequest(f"bench-{batch}-{i}-{start}", p, sp)) for i, p in enumerate(prompts(batch)))
    )
    return sum(len(r.token_ids) for r in results) / (time.perf_counter() - start)


async def best(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        value = fn()
        out.append(await value if asyncio.iscoroutine(value) else value)
    return max(out)


async def builtin_vs_hf(name: str, model_dir: Path, batches: list[int], max_tokens: int, repeats: int) -> list[tuple]:
    from kpop.rollout.builtin.weights import load_model
    from kpop.rollout.builtin_engine import BuiltinEngine

    engine = BuiltinEngine(model_dir, max_batch=max(batches))
    model = load_model(model_dir)
    await engine_tokens_per_s(engine, 2, 4)  # warm-up
    hf_tokens_per_s(model, 2, 4)
    rows = []
    for b in batches:
        ours = await best(lambda b=b: engine_tokens_per_s(engine, b, max_tokens), repeats)
        hf = await best(lambda b=b: hf_tokens_per_s(model, b, max_tokens), repeats)
        rows.append((name, b, "built-in", ours, "HF generate", hf))
        print(f"  {name} batch {b}: built-in {ours:.0f} tok/s, HF {hf:.0f} tok/s", flush=True)
    await engine.close()
    return rows


async def vllm_vs_builtin(model_dir: Path, batches: list[int], max_tokens: int, repeats: int) -> list[tuple]:
    from kpop.rollout.builtin_engine import BuiltinEngine
    from kpop.rollout.vllm_engine import VLLMEngine

    vllm = VLLMEngine(model_dir, kv_cache_gib=0.25, dtype="float32", max_model_len=512)
    print(f"  vLLM start-up {vllm.startup_s:.1f} s", flush=True)
    ours = BuiltinEngine(model_dir, max_batch=max(batches))
    await engine_tokens_per_s(vllm, 2, 4)  # warm-up
    await engine_tokens_per_s(ours, 2, 4)
    rows = []
    for b in batches:
        v = await best(lambda b=b: engine_tokens_per_s(vllm, b, max_tokens), repeats)
        o = await best(lambda b=b: engine_tokens_per_s(ours, b, max_tokens), repeats)
        rows.append(("llama", b, "vLLM", v, "built-in", o))
        print(f"  llama batch {b}: vLLM {v:.0f} tok/s, built-in {o:.0f} tok/s", flush=True)
    vllm.close()
    await ours.close()
    return rows


def print_table(rows: list[tuple]) -> None:
    print(f"\n{'model':<7}| {'batch':>5} | {'A':<11}| {'A tok/s':>8} | {'B':<11}| {'B tok/s':>8} | {'A/B':>5}")
    print("-" * 72)
    for model, b, a_name, a, b_name, bv in rows:
        print(f"{model:<7}| {b:>5} | {a_name:<11}| {a:>8.0f} | {b_name:<11}| {bv:>8.0f} | {a / bv:>5.2f}")


async def run(args, tmp: Path) -> None:
    import torch

    from kpop.rollout.builtin.tiny_models import tiny_hybrid_dir, tiny_llama_dir

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    hybrid = tiny_hybrid_dir(tmp / "hybrid")
    # No EOS in the config, so vLLM (which stops at the config's EOS) generates full lengths too.
    llama = tiny_llama_dir(tmp / "llama", hidden=128, heads=4, kv_heads=4, layers=2, with_tokenizer=True)
    _drop_eos(llama)
    rows = await builtin_vs_hf("hybrid", hybrid, batches, args.max_tokens, args.repeats)
    rows += await builtin_vs_hf("llama", llama, batches, args.max_tokens, args.repeats)
    if not args.no_vllm:
        rows += await vllm_vs_builtin(llama, batches, args.max_tokens, args.repeats)
    print_table(rows)


def _drop_eos(model_dir: Path) -> None:
    import json

    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        if path.exists():
            cfg = json.loads(path.read_text())
            cfg["eos_token_id"] = None
            path.write_text(json.dumps(cfg, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (all sides)")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--quick", action="store_true", help="batches 1,16; 16 tokens; 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.max_tokens, args.repeats = "1,16", 16, 1
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
