"""The run's starting point: a tokenizer and an initial model folder in Hugging Face format.

With `model.path` / `tokenizer.path` set, those folders are used as they are. Otherwise the
tokenizer is trained on reference-solver transcripts of the run's own environments and a fresh
model is initialised from the spec's sizes (a Llama, or the hybrid model from its preset and
overrides: kpop.models.hybrid.fresh), both saved under `<run_dir>/init` (reused when present,
so re-running is cheap and deterministic). The transcripts run the reference solvers in this process,
whose sandbox executions (coding) use the run's `sandbox:` section, as the workers' do.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import asdict
from pathlib import Path

from kpop.envs.registry import make_env
from kpop.rollout.tool_parser import parse_action
from kpop.spec import RunSpec

log = logging.getLogger(__name__)


async def _transcript(env_name: str, options: dict, seed: int, max_turns: int) -> str:
    from kpop.models.tokenizer import render_chat

    env = make_env(env_name, options)
    task = env.reset_task(seed, options)
    messages = [asdict(m) for m in task.messages]
    for _ in range(max_turns):
        text = env.reference_action()
        if text is None:
            break
        messages.append({"role": "assistant", "content": text})
        step = await env.astep(parse_action(text))
        messages.extend(asdict(m) for m in step.observations)
        if step.terminated or step.truncated:
            break
    clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return render_chat(clean, task.tools or None)


def solver_corpus(spec: RunSpec, num: int) -> list[str]:
    from kpop.envs.sandbox.default import configure as configure_sandbox

    configure_sandbox(spec.sandbox)
    rng = random.Random(spec.seed)

    draws = []
    for _ in range(num):   # drawn in this order whatever the episodes take: the corpus depends on the seed only
        entry = rng.choice(spec.envs)
        draws.append((entry, rng.randrange(1 << 30)))

    async def collect() -> list[str]:
        # concurrently: a family whose reference is verified in the sandbox (coding) waits on it, and
        # the sandbox pool bounds how many run at once
        return list(await asyncio.gather(*(_transcript(e.name, e.options, seed, spec.rollout.max_turns) for e, seed in draws)))

    return asyncio.run(collect())


def prepare_initial_model(spec: RunSpec) -> Path:
    """Return the folder (model + tokenizer) the run starts from, creating it if needed."""
    if spec.model.path is not None:
        return spec.model.path
    out = Path(spec.run_dir) / "init"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    from kpop.models.tokenizer import load_tokenizer, train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if spec.tokenizer.path is not None:
        tokenizer = load_tokenizer(spec.tokenizer.path)
    else:
        log.info("training a %d-token BPE tokenizer on solver transcripts", spec.tokenizer.vocab_size)
        tokenizer = train_tokenizer(solver_corpus(spec, 1000), spec.tokenizer.vocab_size, out)
    if spec.model.type == "hybrid":
        from kpop.models.hybrid.fresh import build_hybrid

        build_hybrid(spec.model, tokenizer, out, seed=spec.seed)
    else:
        from kpop.models.tiny_llama import build_tiny_llama

        build_tiny_llama(spec.model, tokenizer, out, seed=spec.seed)
    return out
