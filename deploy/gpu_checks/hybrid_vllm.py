"""GPU smoke check: a hybrid checkpoint served by stock vLLM against the built-in engine's logits.

    python deploy/gpu_checks/hybrid_vllm.py [--dtype bfloat16] [--prompt 64] [--new 16]

A small random hybrid model (the `tiny` preset widened to the MLA and head sizes vLLM's GPU
kernels take) is saved in the `bailing_hybrid` layout (kpop.models.hybrid.checkpoint) and loaded
by stock vLLM (`BailingMoeV2_5ForCausalLM`, trust_remote_code for the config). Compared, as
log-probabilities of the same tokens:
- prefill: vLLM's prompt log-probs of a random prompt vs the built-in engine's model
  (kpop.rollout.builtin.weights.load_model, fp32 on the CPU) teacher-forced on it;
- decode: the log-probs vLLM returns for its own greedy continuation vs the same model
  teacher-forced on prompt + continuation (vLLM's decode path, with its recurrent state and
  latent cache, against a full forward pass).
Pass: max |delta log p| <= 0.1 nats in bf16 (1e-3 in fp32) on both. Reported, not judged: how
many greedy tokens of BuiltinEngine match vLLM's before the first difference (argmax ties of a
random model flip under bf16 noise). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import torch

GPU_SIZES = dict(vocab_size=512, hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
                 kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128)
TOL = {"bfloat16": 0.1, "float16": 0.1, "float32": 1e-3}


def reference_logprobs(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1 from the built-in engine's model."""
    from kpop.rollout.builtin.weights import load_model

    model = load_model(model_dir)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def vllm_run(model_dir: Path, prompt: list[int], new: int, dtype: str) -> tuple[list[float], list[int], list[float]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(model_dir), trust_remote_code=True, dtype=dtype, enforce_eager=True, seed=0,
              skip_tokenizer_init=True, gpu_memory_utilization=0.3, max_model_len=1024)
    params = SamplingParams(temperature=0.0, max_tokens=new, logprobs=0, prompt_logprobs=0, detokenize=False,
                            ignore_eos=True)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params)[0]
    prompt_lp = [d[t].logprob for t, d in zip(prompt[1:], out.prompt_logprobs[1:])]
    gen = out.outputs[0]
    return prompt_lp, list(gen.token_ids), [d[t].logprob for t, d in zip(gen.token_ids, gen.logprobs)]


def builtin_greedy(model_dir: Path, prompt: list[int], new: int) -> list[int]:
    from kpop.rollout.builtin_engine import BuiltinEngine
    from kpop.rollout.engine import GenerationRequest, SamplingParams

    async def go() -> list[int]:
        engine = BuiltinEngine(model_dir, max_batch=1)
        try:
            greedy = SamplingParams(temperature=0.0, max_tokens=new)
            return (await engine.generate(GenerationRequest("gpu-check", prompt, greedy))).token_ids
        finally:
            await engine.close()

    return asyncio.run(go())


def agreement(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(TOL))
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=16)
    args = parser.parse_args()
    from kpop.rollout.builtin.tiny_models import tiny_hybrid_dir

    model_dir = tiny_hybrid_dir(Path(tempfile.mkdtemp(prefix="kpop_gpu_hybrid_")), seed=0, **GPU_SIZES)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, GPU_SIZES["vocab_size"], (args.prompt,), generator=gen).tolist()
    prompt_lp, tokens, token_lp = vllm_run(model_dir, prompt, args.new, args.dtype)
    prefill = float((torch.tensor(prompt_lp) - reference_logprobs(model_dir, prompt)).abs().max())
    decode = float((torch.tensor(token_lp) - reference_logprobs(model_dir, prompt + tokens)[-len(tokens):]).abs().max())
    same = agreement(tokens, builtin_greedy(model_dir, prompt, args.new))
    ok = max(prefill, decode) <= TOL[args.dtype]
    print(json.dumps({"ok": ok, "message": f"stock vLLM ({args.dtype}) vs built-in engine logits: max |dlogp| prefill "
                      f"{prefill:.2e}, decode {decode:.2e} (tol {TOL[args.dtype]:g}); greedy tokens agree for "
                      f"{same}/{len(tokens)}", "prefill_max_abs": prefill, "decode_max_abs": decode,
                      "greedy_agree": same, "new_tokens": len(tokens), "dtype": args.dtype}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
