"""Real GEMM operands from a model: every nn.Linear's input X, weight W and output gradient dY.

`tiny_llama` builds the models issue's tiny LlamaForCausalLM (kpop.models.tiny_llama's config,
random init, nothing is downloaded); `capture` runs one forward/backward of the next-token loss on random tokens and
returns, per linear layer, the triple (X: tokens × in, W: out × in, dY: tokens × out). The LM head
is skipped unless asked for: its dY is the softmax residual, not a hidden-layer gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the probe model; the architecture defaults are those of `LlamaModelSpec`."""

    vocab: int = 512
    hidden: int = 128
    intermediate: int = 384
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    batch: int = 4
    seq: int = 64


@dataclass(frozen=True)
class TokenizerSizes:
    """The fields `kpop.models.tiny_llama.llama_config` reads from a tokenizer, without training one."""

    vocab: int
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 2

    def __len__(self) -> int:
        return self.vocab


def tiny_llama(cfg: TinyModelConfig, seed: int = 0) -> nn.Module:
    """The models issue's tiny Llama (kpop.models.tiny_llama), randomly initialised in memory."""
    from transformers import LlamaForCausalLM

    from kpop.models.tiny_llama import llama_config
    from kpop.spec.model import LlamaModelSpec

    spec = LlamaModelSpec(
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        num_kv_heads=cfg.kv_heads,
        max_position_embeddings=max(cfg.seq, 16),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(spec, TokenizerSizes(cfg.vocab))).float()


def capture(model: nn.Module, tokens: torch.Tensor, include_lm_head: bool = False) -> list[tuple[str, tuple]]:
    """[(name, (X, W, dY))] for every nn.Linear after one forward/backward on `tokens`."""
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    linears = [(n, m) for n, m in linears if include_lm_head or "lm_head" not in n]
    for name, module in linears:
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: inputs.__setitem__(name, i[0].detach())))
        handles.append(module.register_full_backward_hook(lambda m, gi, go, name=name: grads.__setitem__(name, go[0].detach())))
    try:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
    finally:
        for h in handles:
            h.remove()
    result = []
    for name, module in linears:
        x = inputs[name].reshape(-1, module.in_features)
        dy = grads[name].reshape(-1, module.out_features)
        result.append((name, (x, module.weight.detach(), dy)))
    return result


def model_tensors(cfg: TinyModelConfig, seed: int = 0) -> list[tuple[str, tuple]]:
    model = tiny_llama(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), generator=gen)
    return capture(model, tokens)
