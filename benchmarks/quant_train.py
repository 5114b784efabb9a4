"""Training benchmark for kpop.quant: loss of the models issue's tiny Llama trained under each
recipe (bf16 = unquantised baseline, nvfp4, mxfp4, ufp4) on a synthetic Markov-chain language.

Every token has `branching` equally likely successors under a fixed random transition table, so
the best achievable loss is ln(branching). Each recipe starts from the same initial weights and
sees the same batches; the report is the final loss (mean of the last 10 steps) and its
degradation relative to bf16. All transformer blocks are quantised (first/last kept: 0) and the
LM head stays high precision, so the recipes differ only in the GEMMs they quantise.

    .venv/bin/python benchmarks/quant_train.py --steps 200 [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time


def markov_batches(vocab: int, branching: int, batch: int, seq: int, steps: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, vocab, (vocab, branching), generator=gen)
    for _ in range(steps):
        tok = torch.randint(0, vocab, (batch, 1), generator=gen)
        cols = [tok]
        for _ in range(seq - 1):
            pick = torch.randint(0, branching, (batch, 1), generator=gen)
            cols.append(table[cols[-1].squeeze(1)].gather(1, pick))
        yield torch.cat(cols, 1)


def train(recipe_name: str, args: argparse.Namespace) -> list[float]:
    import torch
    from transformers import LlamaForCausalLM

    from kpop.models.tiny_llama import llama_config
    from kpop.quant import apply, make_recipe
    from kpop.quant.probe import TokenizerSizes
    from kpop.spec.model import LlamaModelSpec

    spec = LlamaModelSpec(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=3 * args.hidden)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(llama_config(spec, TokenizerSizes(args.vocab)))
    apply(model, make_recipe(recipe_name, first_blocks=0, last_blocks=0))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses = []
    torch.manual_seed(args.seed + 1)  # SR draws
    for tokens in markov_batches(args.vocab, args.branching, args.batch, args.seq, args.steps, args.seed):
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["bf16", "nvfp4", "mxfp4", "ufp4"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--branching", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = {}
    for name in args.recipes:
        t0 = time.perf_counter()
        losses = train(name, args)
        tail = losses[-10:]
        results[name] = {"final_loss": sum(tail) / len(tail), "first_loss": losses[0], "seconds": time.perf_counter() - t0}
    base = results.get("bf16", {}).get("final_loss")
    for r in results.values():
        r["vs_bf16"] = (r["final_loss"] - base) if base is not None else None
    if args.json:
        print(json.dumps({"optimum": math.log(args.branching), "results": results}, indent=2))
        return
    print(f"optimum ln({args.branching}) = {math.log(args.branching):.4f}")
    for name, r in results.items():
        delta = "" if r["vs_bf16"] is None else f"  Δ vs bf16 {r['vs_bf16']:+.4f}"
        print(f"{name:>6}: loss {r['first_loss']:.4f} → {r['final_loss']:.4f}{delta}  ({r['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
