"""A smoke-test checkpoint: a small model that has memorised an environment's reference episodes.

Used to check a deployment end to end (tool calls parsed, multi-turn episodes finished) without a
trained model: `memorise_episodes(src, out, "calculator", seeds=[0])` fine-tunes the checkpoint
in `src` on the exact token ids of the reference solver's episodes for those seeds (rendered with
the checkpoint's chat template and the task's tools, as the OpenAI app renders them) and saves
model + tokenizer to `out`. Greedy decoding then replays those episodes.

Invariant: the training sequences are the agent loop's own records (kpop.rollout.agent_loop with
the solver policy), so they are token-for-token what a client replaying the episode sends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path


def reference_episodes(tokenizer, env_name: str, seeds: list[int]) -> list[tuple[list[int], list[int]]]:
    """(token ids, loss mask) of the reference solver's episode for each seed."""
    from kpop.envs.registry import make_env
    from kpop.rollout.agent_loop import Episode, LoopLimits, run_episode, solver_policy
    from kpop.rollout.chat import ChatFormat

    chat = ChatFormat(tokenizer)

    async def one(seed: int) -> tuple[list[int], list[int]]:
        env = make_env(env_name)
        traj = await run_episode(env, Episode(env_name, seed), chat, solver_policy(env, chat),
                                 LoopLimits(max_turns=4, max_total_tokens=400, max_new_tokens=200))
        return list(traj.token_ids), list(traj.loss_mask)

    return [asyncio.run(one(s)) for s in seeds]


def reference_sequences(tokenizer, env_name: str, seeds: list[int]) -> list[list[int]]:
    return [ids for ids, _ in reference_episodes(tokenizer, env_name, seeds)]


def memorise_episodes(src: str | Path, out: str | Path, env_name: str, seeds: list[int],
                      steps: int = 250, lr: float = 1e-2) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses from thread hand-offs
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    episodes = reference_episodes(tokenizer, env_name, seeds)
    width = max(len(s) for s, _ in episodes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in episodes])
    labels = torch.tensor([s + [-100] * (width - len(s)) for s, _ in episodes])
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in episodes])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.set_num_threads(threads)
    out = Path(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def smoke_checkpoint(src: str | Path, folder: str | Path, env_name: str = "calculator",
                     seeds: tuple[int, ...] = (0,)) -> Path:
    """`memorise_episodes` into `folder` unless it is already there (built once, then reused)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    staging = folder.with_name(folder.name + f".staging-{os.getpid()}")
    memorise_episodes(src, staging, env_name, list(seeds))
    try:
        staging.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return folder
