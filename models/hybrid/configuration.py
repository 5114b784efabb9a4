"""`BailingMoeV2_5Config`: the config of the hybrid model, in the public `bailing_hybrid` format.

Field names and meanings follow the public Ling-2.5 / Ring-2.5 `configuration_bailing_moe_v2_5.py`
and what stock vLLM's `BailingMoeV25ForCausalLM` reads (vllm/model_executor/models/
bailing_moe_linear.py): `layer_group_size` (M), `group_norm_size`, `first_k_dense_replace`,
`num_experts`, `num_experts_per_tok`, `n_group`, `topk_group`, `routed_scaling_factor`,
`moe_router_enable_expert_bias`, `score_function`, `router_dtype`, `num_shared_experts`,
`moe_intermediate_size`, `kv_lora_rank`, `q_lora_rank`, `qk_rope_head_dim`, `qk_nope_head_dim`,
`v_head_dim`, `partial_rotary_factor`, `use_qk_norm`, `num_nextn_predict_layers`, ...

Layer i is MLA when `(i + 1) % layer_group_size == 0` or i lies past the last full group; all
other layers are Lightning Attention. Layers i < first_k_dense_replace use a dense SwiGLU.

KPop-only fields (ignored by other readers): `lightning_decay_offset` (0: vLLM/SGLang depth scaling
`1 - i/(L-1)`, the default so training matches serving; 1: the HF modelling code's `1 - (i-1)/(L-1)`).

This file imports only transformers: `save_checkpoint` copies it into each checkpoint as
`configuration_bailing_moe_v2_5.py` (with `auto_map`) so `trust_remote_code` readers such as vLLM can
build the config without KPop installed.
"""

from transformers import PretrainedConfig


class BailingMoeV2_5Config(PretrainedConfig):
    model_type = "bailing_hybrid"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=157184,
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=16,
        hidden_act="silu",
        use_qkv_bias=False,
        use_bias=False,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        initializer_range=0.02,
        max_position_embeddings=32768,
        rope_theta=600000.0,
        rope_scaling=None,
        use_cache=True,
        pad_token_id=None,
        eos_token_id=None,
        bos_token_id=None,
        num_experts=256,
        num_shared_experts=1,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        moe_intermediate_size=512,
        first_k_dense_replace=1,
        head_dim=128,
        use_qk_norm=True,
        num_nextn_predict_layers=0,
        mtp_loss_scaling_factor=0.1,
        moe_router_enable_expert_bias=True,
        routed_scaling_factor=2.5,
        layer_group_size=8,
        group_norm_size=4,
        linear_silu=False,
        kv_lora_rank=512,
        q_lora_rank=None,
        qk_rope_head_dim=64,
        v_head_dim=128,
        qk_nope_head_dim=128,
        rope_interleave=True,
        partial_rotary_factor=0.5,
        score_function="sigmoid",
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        router_dtype="fp32",
        norm_topk_prob=True,
        lightning_decay_offset=0,
        **kwargs,
    ):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act, self.use_qkv_bias, self.use_bias = hidden_act, use_qkv_bias, use_bias
        self.rms_norm_eps, self.initializer_range = rms_norm_eps, initializer_range
        self.max_position_embeddings, self.rope_theta, self.rope_scaling = max_position_embeddings, rope_theta, rope_scaling
        self.use_cache = use_cache
        self.num_experts, self.num_shared_experts, self.num_experts_per_tok = num_experts, num_shared_experts, num_experts_per_tok
        self.n_group, self.topk_group, self.moe_intermediate_size = n_group, topk_group, moe_intermediate_size
        self.first_k_dense_replace, self.head_dim, self.use_qk_norm = first_k_dense_replace, head_dim, use_qk_norm
        self.num_nextn_predict_layers, self.mtp_loss_scaling_factor = num_nextn_predict_layers, mtp_loss_scaling_factor
        self.moe_router_enable_expert_bias, self.routed_scaling_factor = moe_router_enable_expert_bias, routed_scaling_factor
        self.layer_group_size, self.group_norm_size, self.linear_silu = layer_group_size, group_norm_size, linear_silu
        self.kv_lora_rank, self.q_lora_rank = kv_lora_rank, q_lora_rank
        self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim = qk_rope_head_dim, qk_nope_head_dim, v_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.rope_interleave, self.partial_rotary_factor = rope_interleave, partial_rotary_factor
        self.score_function, self.scoring_func, self.topk_method = score_function, scoring_func, topk_method
        self.router_dtype, self.norm_topk_prob = router_dtype, norm_topk_prob
        self.lightning_decay_offset = lightning_decay_offset
        kwargs.setdefault("architectures", ["BailingMoeV2_5ForCausalLM"])
        super().__init__(
            pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
            tie_word_embeddings=tie_word_embeddings, **kwargs,
        )

    def is_mla_layer(self, layer_idx: int) -> bool:
        m, n = self.layer_group_size, self.num_hidden_layers
        return (layer_idx + 1) % m == 0 or layer_idx >= n // m * m

    def is_moe_layer(self, layer_idx: int) -> bool:
        return bool(self.num_experts) and self.num_experts > 1 and layer_idx >= self.first_k_dense_replace
