"""Build a small Llama-architecture checkpoint locally (no hub), in Hugging Face format.

Used by the quickstart and by tests: a randomly initialised LlamaForCausalLM with the sizes of a
`LlamaModelSpec`, saved as config.json + model.safetensors next to its tokenizer, so vLLM, the
learner and transformers' Auto classes can all load the same folder.
"""

from __future__ import annotations

from pathlib import Path

from kpop.spec.model import LlamaModelSpec


def llama_config(spec: LlamaModelSpec, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=spec.init_std,
        torch_dtype="float32",
    )


def build_tiny_llama(spec: LlamaModelSpec, tokenizer, out_dir: str | Path, seed: int = 0) -> Path:
    """Initialise a model from `spec`, save it with `tokenizer` into `out_dir`, return the folder."""
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(spec, tokenizer))
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
