"""A smoke-test checkpoint: a small model that has memorised an environment's reference episodes.

Used to check a deployment end to end (tool calls parsed, multi-turn episodes finished) without a
trained model: `memorise_episodes(src, out, "calculator", seeds=[0, 1])` fine-tunes the checkpoint
in `src` on the exact token ids of the reference solver's episodes for those seeds (rendered with
the checkpoint's chat template and the task's tools, as the OpenAI app renders them) and saves
model + tokenizer to `out`. Greedy decoding then replays those episodes.

Invariant: the training sequences are the agent loop's own records (kpop.rollout.agent_loop with
the solver policy), so they are token-for-token what a client replaying the episode sends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


def reference_sequences(tokenizer, env_name: str, seeds: list[int]) -> list[list[int]]:
    from kpop.envs.registry import make_env
    from kpop.rollout.agent_loop import Episode, LoopLimits, run_episode, solver_policy
    from kpop.rollout.chat import ChatFormat

    chat = ChatFormat(tokenizer)

    async def one(seed: int) -> list[int]:
        env = make_env(env_name)
        traj = await run_episode(env, Episode(env_name, seed), chat, solver_policy(env, chat),
                                 LoopLimits(max_turns=4, max_total_tokens=400, max_new_tokens=200))
        return list(traj.token_ids)

    return [asyncio.run(one(s)) for s in seeds]


def memorise_episodes(src: str | Path, out: str | Path, env_name: str, seeds: list[int],
                      steps: int = 200, lr: float = 3e-3) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    seqs = reference_sequences(tokenizer, env_name, seeds)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
    attention = (labels != -100).long()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = Path(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
