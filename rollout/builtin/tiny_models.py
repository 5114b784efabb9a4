"""Tiny local model folders (random init, no hub) for the built-in engine's tests and benchmark.

- `tiny_hybrid_dir(out)`: the hybrid model's `tiny` preset (or `preset`, e.g. the benchmark's `medium`) (Lightning + MLA layers, MoE), saved
  in the `bailing_hybrid` layout; token ids only (no tokenizer, no EOS).
- `tiny_llama_dir(out, hidden, heads, ...)`: a `LlamaForCausalLM` in Hugging Face format, token ids
  only unless `with_tokenizer` (a small BPE trained locally; EOS `<|im_end|>`), which stop strings need.
Both are deterministic in `seed`.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_hybrid(seed: int = 0, preset: str = "tiny", **overrides):
    from kpop.models.hybrid import BailingMoeV2_5ForCausalLM
    from kpop.models.hybrid.presets import preset_config

    torch.manual_seed(seed)
    return BailingMoeV2_5ForCausalLM(preset_config(preset, **overrides)).eval()


def tiny_hybrid_dir(out: str | Path, seed: int = 0, preset: str = "tiny", **overrides) -> Path:
    from kpop.models.hybrid.checkpoint import save_checkpoint

    return save_checkpoint(tiny_hybrid(seed, preset, **overrides), Path(out))


def tiny_llama_dir(
    out: str | Path, hidden: int = 64, heads: int = 2, kv_heads: int = 1, layers: int = 2,
    vocab: int = 320, seed: int = 0, with_tokenizer: bool = False,
) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    special = {}
    if with_tokenizer:
        from kpop.models.tokenizer import train_tokenizer

        texts = [f"the quick brown fox jumps over {i} lazy dogs; 1+{i}={i + 1}" for i in range(300)]
        tok = train_tokenizer(texts, vocab, out)
        vocab = len(tok)
        special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        tie_word_embeddings=False, **special,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    return out
