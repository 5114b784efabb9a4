"""Learner benchmark: DeepSpeed overhead against plain PyTorch, and weight-publish time vs size.

1. Training throughput. The same Llama (from the same initial weights) trains on the same batches
   of Trajectories in "sft" mode, once through `kpop.learner.Learner` (DeepSpeed engine, ZeRO
   stage `--zero`, FP32, unmanaged gradient accumulation, clipping) and once through a plain
   PyTorch loop (collate, forward, masked NLL normalised by the batch's token count, backward per
   micro-batch, clip_grad_norm_, AdamW.step). Reported: generated (trained) tokens per second,
   the best of `--repeats` interleaved rounds each, and the ratio DeepSpeed / PyTorch.
2. Publish. `Learner.publish()` (HF state dict -> safetensors chunks, the engines' WeightUpdate)
   for models of growing hidden size: parameters, bytes, seconds, MB/s.

    .venv/bin/python benchmarks/learner.py [--hidden 256 --layers 4 --steps 6 --repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def make_model_dir(path: Path, hidden: int, layers: int, vocab: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(["a b c. d e, f g h! i j k?"] * 10, trainers.BpeTrainer(
        vocab_size=64, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    heads = max(2, hidden // 64)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=int(2.75 * hidden), num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), vocab_size=vocab,
                         pad_token_id=0, max_position_embeddings=1024)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(path))
    fast.save_pretrained(str(path))
    return path


def batches(steps: int, rows: int, prompt: int, gen: int, vocab: int, seed: int = 0):
    from kpop.trajectory import Trajectory

    rng = random.Random(seed)
    out = []
    for s in range(steps):
        step = []
        for i in range(rows):
            ids = [rng.randrange(4, vocab) for _ in range(prompt + gen)]
            step.append(Trajectory(f"t{s}.{i}", "bench", ids, [0] * prompt + [1] * gen,
                                   [0.0] * prompt + [-1.0] * gen, [-1] * prompt + [0] * gen, group_id=f"{s}.{i // 4}"))
        out.append(step)
    return out


class PlainTorch:
    """The reference loop: what the learner does for "sft", without DeepSpeed."""

    def __init__(self, model_dir: Path, lr: float, clip: float, micro: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.clip, self.micro = clip, micro

    def train_step(self, trajs) -> int:
        import torch

        from kpop.learner.batch import collate, split
        from kpop.learner.logprobs import token_logprobs

        batch = collate(trajs, 0)
        n = batch.num_tokens
        for mb in split(batch, self.micro):
            logp = token_logprobs(self.model, mb.input_ids, mb.attention_mask)
            (-(logp * mb.loss_mask).sum() / n).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return n


def tokens_per_s(step_fn, data) -> float:
    step_fn(data[0])                      # warm-up (allocations, first-call overheads)
    t0, tokens = time.perf_counter(), 0
    for trajs in data[1:]:
        out = step_fn(trajs)
        tokens += out if isinstance(out, int) else out.tokens
    return tokens / (time.perf_counter() - t0)


def throughput(args) -> dict:
    from kpop.learner.learner import Learner
    from kpop.spec.learner import LearnerSpec

    folder = make_model_dir(Path(tempfile.mkdtemp()) / "m", args.hidden, args.layers, args.vocab)
    data = batches(args.steps + 1, args.rows, args.prompt, args.gen, args.vocab)
    spec = LearnerSpec(zero_stage=args.zero, micro_batch_size=args.micro, lr=1e-4, grad_clip=1.0)
    ds = Learner(str(folder), spec, seed=0, num_threads=args.threads)
    plain = PlainTorch(folder, 1e-4, 1.0, args.micro)
    best_ds = best_pt = 0.0
    for _ in range(args.repeats):
        best_pt = max(best_pt, tokens_per_s(plain.train_step, data))
        best_ds = max(best_ds, tokens_per_s(lambda t: ds.train_step(t, "sft"), data))
    params = sum(p.numel() for p in plain.model.parameters())
    return {"params": params, "zero_stage": args.zero, "pytorch_tok_s": best_pt, "deepspeed_tok_s": best_ds,
            "ratio": best_ds / best_pt}


def publish_times(args) -> list[dict]:
    from kpop.learner.learner import Learner
    from kpop.spec.learner import LearnerSpec

    rows = []
    for hidden in args.publish_hidden:
        folder = make_model_dir(Path(tempfile.mkdtemp()) / f"h{hidden}", hidden, args.layers, args.vocab)
        learner = Learner(str(folder), LearnerSpec(zero_stage=args.zero), seed=0, num_threads=args.threads)
        learner.publish()
        t0 = time.perf_counter()
        update = learner.publish()
        secs = time.perf_counter() - t0
        size = sum(len(c) for c in update.chunks)
        params = sum(p.numel() for p in learner.engine.module.parameters())
        rows.append({"hidden": hidden, "params": params, "bytes": size, "chunks": len(update.chunks),
                     "seconds": secs, "mb_per_s": size / 1e6 / secs})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--rows", type=int, default=16, help="trajectories per step")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--gen", type=int, default=96)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--publish-hidden", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = {"throughput": throughput(args), "publish": publish_times(args)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t = result["throughput"]
    print(f"training ({t['params'] / 1e6:.2f}M params, ZeRO-{t['zero_stage']}, fp32, sft, tokens = trained tokens)")
    print(f"  plain PyTorch  {t['pytorch_tok_s']:10.0f} tok/s")
    print(f"  DeepSpeed      {t['deepspeed_tok_s']:10.0f} tok/s   ratio {t['ratio']:.3f}")
    print("publish (Learner.publish: state dict -> safetensors chunks)")
    print(f"  {'hidden':>6} {'params':>10} {'MB':>8} {'chunks':>6} {'seconds':>8} {'MB/s':>8}")
    for r in result["publish"]:
        print(f"  {r['hidden']:>6} {r['params']:>10} {r['bytes'] / 1e6:>8.1f} {r['chunks']:>6} "
              f"{r['seconds']:>8.3f} {r['mb_per_s']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
