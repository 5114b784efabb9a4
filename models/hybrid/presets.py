"""Size presets. `tiny` runs the CPU tests and the quickstart; `medium` the engine benchmark; `flash` and `1t` are the published
Ling-2.6 sizes (report Table 1), for configs only -- never instantiate them on a CPU machine.

Layer counts are multiples of `layer_group_size`: stock vLLM treats layers past the last full
group as linear attention while the HF code makes them MLA, so only whole groups are portable.
Fields the report does not give for flash/1T (expert counts, ranks) follow the public Ling-2.5
configs: 256 experts, 8 active, 8 groups / top-4, 1 shared, MLA ranks 512 (kv) and 1536 (q).
"""

from __future__ import annotations

from typing import Any

from kpop.models.hybrid.configuration import BailingMoeV2_5Config

_COMMON: dict[str, Any] = dict(
    layer_group_size=8, first_k_dense_replace=1, num_shared_experts=1, routed_scaling_factor=2.5,
    n_group=8, topk_group=4, num_experts_per_tok=8, num_experts=256, partial_rotary_factor=0.5,
    use_qk_norm=True, group_norm_size=4, rms_norm_eps=1e-6, rope_theta=6e6, vocab_size=157184,
    qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, kv_lora_rank=512, q_lora_rank=1536,
    head_dim=128, max_position_embeddings=262144, mtp_loss_scaling_factor=0.1,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        _COMMON, vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, layer_group_size=4,
        num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=32,
        kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
        group_norm_size=2, rope_theta=10000.0, max_position_embeddings=512,
    ),
    # ~83M parameters (~45M active per token): big enough that decoding is bound by memory bandwidth
    # (batch 1) or matmul throughput (batch 64) rather than per-op overhead; the engine benchmark's size.
    "medium": dict(
        _COMMON, vocab_size=320, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
        num_attention_heads=12, num_key_value_heads=12, head_dim=64, layer_group_size=4,
        num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=384,
        kv_lora_rank=256, q_lora_rank=None, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64,
        group_norm_size=4, rope_theta=10000.0, max_position_embeddings=2048,
    ),
    "flash": dict(_COMMON, hidden_size=4096, intermediate_size=9216, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, moe_intermediate_size=1024),
    "1t": dict(_COMMON, hidden_size=8192, intermediate_size=18432, num_hidden_layers=80,
               num_attention_heads=64, num_key_value_heads=64, moe_intermediate_size=2048),
}


def preset_config(name: str, **overrides: Any) -> BailingMoeV2_5Config:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return BailingMoeV2_5Config(**{**PRESETS[name], **overrides})


_SPEC_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                "layer_group_size": "layer_group_size", "num_experts": "num_experts", "num_mtp_layers": "num_nextn_predict_layers",
               "init_std": "initializer_range", "max_position_embeddings": "max_position_embeddings"}


def config_from_spec(spec: Any) -> BailingMoeV2_5Config:
    """A `HybridModelSpec` (kpop.spec.model) -> config: its preset plus the overrides it sets."""
    overrides = {key: getattr(spec, field) for field, key in _SPEC_FIELDS.items() if getattr(spec, field, None) is not None}
    if "num_attention_heads" in overrides:
        overrides["num_key_value_heads"] = overrides["num_attention_heads"]
    return preset_config(spec.preset, **overrides)


def parameter_count(config: BailingMoeV2_5Config) -> int:
    """Parameters of a model of `config`, without allocating it: one decoder layer of each kind
    (Lightning or MLA, dense or MoE) and one MTP layer are built on the meta device and counted."""
    import torch

    from kpop.models.hybrid.modeling import DecoderLayer, MTPLayer

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    kinds: dict[tuple[bool, bool], int] = {}
    total, n = 0, config.num_hidden_layers
    with torch.device("meta"):
        for i in range(n):
            key = (config.is_mla_layer(i), config.is_moe_layer(i))
            if key not in kinds:
                kinds[key] = count(DecoderLayer(config, i))
            total += kinds[key]
        if config.num_nextn_predict_layers:
            total += config.num_nextn_predict_layers * count(MTPLayer(config, n))
    embedding = config.vocab_size * config.hidden_size
    return total + embedding * (1 if config.tie_word_embeddings else 2) + config.hidden_size
