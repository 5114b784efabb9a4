"""Training benchmark for kpop.quant: the cold start of a run trained under each precision recipe,
on the tiny Llama and the tiny hybrid model, over several seeds.

Recipes, each through the learner itself (kpop.learner.Learner, in this process: the same
`apply_spec`, AdamW, gradient clipping and masked SFT loss as a run's cold start):
- fp32:  `learner.precision: fp32`, nothing quantised; the reference every gap is taken against.
- bf16:  `learner.precision: bf16`: DeepSpeed's bf16 mode on CPU, i.e. weights, activations and
         GEMMs in bfloat16 with FP32 master weights and Adam state in the optimiser (real bf16
         arithmetic, not an autocast of FP32 GEMMs).
- ufp4, nvfp4, mxfp4:  `learner.quant.recipe`, with the learner's defaults: the first and last
         transformer block and the LM head stay high precision, every other linear runs its three
         GEMMs through the recipe's 4-bit emulation (kpop.quant); master weights FP32.

Data (the run's cold-start data, not a synthetic language): calculator tasks from the run's task
stream, solved by the reference solver through the agent loop (the token ids and loss masks
`ctx.solve` gives the cold start), verified (reward >= 0.99), tokenised with a BPE tokenizer
trained as kpop.bootstrap trains it (1000 solver transcripts of `examples/hybrid.yaml`'s spec,
seed 0, shared by every seed). Models: `llama` = `LlamaModelSpec()` (the quickstart's model),
`hybrid` = `examples/hybrid.yaml`'s (preset `tiny`), both sized to that tokenizer.

Seed s fixes the model's initial weights, the training tasks (task stream seed s), the batch order
and the learner's torch seed (stochastic-rounding draws); every recipe of one seed and model sees
the same initial weights and batches. Per run: `final` = mean of the last `--tail` step losses
(the training forward: quantised for the 4-bit recipes); `held-out` = SFT loss on held-out solver
episodes of the trained weights in FP32, unquantised (what checkpoints and engines hold). The
table gives means over seeds ± standard error, and the gap to fp32 as the mean of per-seed
differences ± its standard error.

Not done here: the short RL run per recipe from one cold start (issue 20 asks for it too).

    .venv/bin/python benchmarks/quant_train.py [--models llama hybrid] [--seeds 0 1 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import time
from pathlib import Path

RECIPES = ("fp32", "bf16", "ufp4", "nvfp4", "mxfp4")
SPEC = Path(__file__).resolve().parent.parent / "examples" / "hybrid.yaml"


def learner_spec(base, recipe: str):
    """The run's learner section with `recipe` applied (see the module docstring)."""
    precision = "bf16" if recipe == "bf16" else "fp32"
    quant = recipe if recipe in ("ufp4", "nvfp4", "mxfp4") else "bf16"  # QuantSpec's "bf16" = off
    return base.model_copy(update={"precision": precision, "quant": base.quant.model_copy(update={"recipe": quant})})


def solved(spec, tokenizer, episodes) -> list:
    """Verified reference-solver trajectories of `episodes`, made as an environment worker's `solve`."""
    from kpop.envs.registry import make_env
    from kpop.rollout.agent_loop import run_episode, solver_policy
    from kpop.rollout.chat import ChatFormat
    from kpop.runtime.build import env_config, loop_limits

    chat, limits = ChatFormat(tokenizer), loop_limits(spec.rollout)
    configs = {e.name: env_config(e) for e in spec.envs}

    async def one(ep):
        cfg = configs[ep.env_name]
        env = make_env(ep.env_name, dict(cfg.options))
        env.set_reward_terms(cfg.rewards)
        return await run_episode(env, ep, chat, solver_policy(env, chat), limits, dict(cfg.options))

    async def all_():
        return [await one(ep) for ep in episodes]

    return [t for t in asyncio.run(all_()) if t.reward >= 0.99]


def build_model(kind: str, spec, tokenizer, out: Path, seed: int) -> Path:
    if kind == "hybrid":
        from kpop.models.hybrid.fresh import build_hybrid

        return build_hybrid(spec.model, tokenizer, out, seed=seed)
    from kpop.models.tiny_llama import build_tiny_llama
    from kpop.spec.model import LlamaModelSpec

    return build_tiny_llama(LlamaModelSpec(), tokenizer, out, seed=seed)


def held_out_loss(model_dir: Path, state: dict, trajectories: list, batch: int = 32) -> float:
    """Masked next-token loss (sft_loss's normalisation) of `state` loaded into a plain FP32 model."""
    import torch
    from transformers import AutoModelForCausalLM

    import kpop.models.hybrid  # noqa: F401 (registers bailing_hybrid with the Auto classes)
    from kpop.learner.batch import collate
    from kpop.learner.logprobs import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    total, tokens = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(trajectories), batch):
            b = collate(trajectories[i:i + batch], model.config.pad_token_id or 0)
            logp = token_logprobs(model, b.input_ids, b.attention_mask)
            total -= float((logp * b.loss_mask).sum())
            tokens += float(b.loss_mask.sum())
    return total / max(tokens, 1.0)


def train_one(kind: str, recipe: str, seed: int, spec, tokenizer, train: list, held: list, args, work: Path) -> dict:
    from kpop.learner.learner import Learner

    model_dir = work / f"{kind}-{seed}"
    if not (model_dir / "config.json").is_file():
        build_model(kind, spec, tokenizer, model_dir, seed)
    learner = Learner(str(model_dir), learner_spec(spec.learner, recipe), seed=seed, sft_lr=args.lr,
                      num_threads=args.threads)
    rng = random.Random(seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    losses = []
    for _ in range(args.steps):
        losses.append(learner.train_step(rng.sample(train, min(args.batch, len(train))), "sft").loss)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    tail = losses[-args.tail:]
    state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    # the process group stays up for the next Learner (DeepSpeed keeps a handle on it)
    return {"model": kind, "recipe": recipe, "seed": seed, "first_loss": losses[0],
            "final_loss": sum(tail) / len(tail), "held_out_loss": held_out_loss(model_dir, state, held),
            "finite": all(math.isfinite(x) for x in losses), "cpu_s": cpu, "wall_s": wall}


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample s.d. / sqrt(n); nan for n < 2)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def summarise(runs: list[dict], key: str = "final_loss") -> list[dict]:
    """One row per (model, recipe): `key` over seeds, and its per-seed gap to the same seed's fp32."""
    ref = {(r["model"], r["seed"]): r[key] for r in runs if r["recipe"] == "fp32"}
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        for recipe in dict.fromkeys(r["recipe"] for r in runs if r["model"] == model):
            mine = [r for r in runs if r["model"] == model and r["recipe"] == recipe]
            gaps = [r[key] - ref[(model, r["seed"])] for r in mine if (model, r["seed"]) in ref]
            m, se = mean_se([r[key] for r in mine])
            gm, gse = mean_se(gaps) if gaps else (float("nan"), float("nan"))
            rows.append({"model": model, "recipe": recipe, "seeds": len(mine), "mean": m, "se": se,
                         "gap": gm, "gap_se": gse})
    return rows


def table(runs: list[dict]) -> str:
    """A markdown table: final and held-out loss and their gaps to fp32, mean ± s.e. over seeds."""
    final, held = summarise(runs, "final_loss"), summarise(runs, "held_out_loss")
    lines = ["| model | recipe | seeds | final loss | gap to fp32 | held-out loss | gap to fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f, h in zip(final, held):
        gap = lambda r: "-" if r["recipe"] == "fp32" else f"{r['gap']:+.4f} ± {r['gap_se']:.4f}"  # noqa: E731
        lines.append(f"| {f['model']} | {f['recipe']} | {f['seeds']} | {f['mean']:.4f} ± {f['se']:.4f} | {gap(f)} "
                     f"| {h['mean']:.4f} ± {h['se']:.4f} | {gap(h)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=("llama", "hybrid"), default=["llama", "hybrid"])
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20, help="SFT steps per run")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--lr", type=float, default=3e-3, help="SFT learning rate (the cold start's sft.lr)")
    p.add_argument("--tail", type=int, default=5, help="final loss = mean of this many last steps")
    p.add_argument("--train-tasks", type=int, default=512, help="solver episodes per seed to draw batches from")
    p.add_argument("--held-out", type=int, default=64, help="held-out solver episodes for the held-out loss")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None, help="where models and the tokenizer go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="also print every run as JSON")
    args = p.parse_args()

    from kpop.bootstrap import solver_corpus
    from kpop.models.tokenizer import train_tokenizer
    from kpop.spec.load import load_spec
    from kpop.tasks import TaskSampler

    spec = load_spec(str(SPEC))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant_train-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"settings: models {args.models}, recipes {args.recipes}, seeds {args.seeds}, {args.steps} SFT steps x "
          f"{args.batch} sequences, lr {args.lr}, final = mean of last {args.tail}, {args.train_tasks} training / "
          f"{args.held_out} held-out calculator episodes per seed, {args.threads} threads; "
          "4-bit recipes keep the first/last block and lm_head high precision (the learner's defaults)", flush=True)
    tokenizer = train_tokenizer(solver_corpus(spec, 1000), spec.tokenizer.vocab_size, work / "tokenizer")
    runs = []
    for seed in args.seeds:
        sampler = TaskSampler(spec.envs, seed)
        train = solved(spec, tokenizer, [e for g in sampler.next_groups(args.train_tasks, 1) for e in g])
        held = solved(spec, tokenizer, sampler.held_out(args.held_out))
        for kind in args.models:
            for recipe in args.recipes:
                try:
                    r = train_one(kind, recipe, seed, spec, tokenizer, train, held, args, work)
                except (RuntimeError, NotImplementedError, TypeError) as exc:
                    if recipe != "bf16":
                        raise
                    # DeepSpeed's bf16 mode is the one recipe that depends on this machine's build
                    print(f"{kind} {recipe} seed {seed}: dropped ({type(exc).__name__}: {exc})", flush=True)
                    continue
                runs.append(r)
                print(f"{kind} {recipe} seed {seed}: loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}, held-out "
                      f"{r['held_out_loss']:.4f} ({r['cpu_s']:.0f} s CPU, {r['wall_s']:.0f} s wall)", flush=True)
    print(table(runs))
    if args.json:
        print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
