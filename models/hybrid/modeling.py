"""The hybrid causal LM (`BailingMoeV2_5ForCausalLM`, model_type `bailing_hybrid`).

Layout: `model.word_embeddings` -> `model.layers[i]` (pre-RMSNorm `input_layernorm` -> `attention`
-> residual -> `post_attention_layernorm` -> `mlp` -> residual) -> `model.norm` -> `lm_head`.
`attention` is `LightningAttention` or `MultiLatentAttention` (config.is_mla_layer); `mlp` is a
dense `SwiGLU` for i < first_k_dense_replace, else `MoE`. Optional MTP layers live at
`model.layers[num_hidden_layers + j]` (as in the public checkpoints); they are used only for the
training loss, weighted by `mtp_loss_scaling_factor`.

Trainer / engine API
--------------------
    out = model(input_ids, attention_mask=None, labels=None)        # full sequence
    out.logits [B, T, V]; out.loss (next-token CE, + MTP term when labels and MTP layers exist)
    out = model(input_ids, attention_mask, mtp_logprobs="all" | "layers")   # + out["mtp_logprobs"]
    out["mtp_logprobs"] [D, B, T-1]: the MTP depths' log-probs of the sequence's own tokens, laid out
    like the next-token targets (mtp_token_logprobs); absent without MTP layers. "all": their
    gradient reaches the trunk, embeddings and head as in pre-training; "layers": only the MTP layers
    (the learner's choice in RL steps, kpop.learner.objectives.mtp).

    cache = model.new_cache()                                       # HybridCache, empty
    out = model(prompt_ids, past_key_values=cache, use_cache=True)  # prefill
    out = model(next_ids, past_key_values=out.past_key_values, use_cache=True)   # decode, [B, 1]

Positions default to `cache.seq_len + arange(T)`; `position_ids` may be passed. Passing a
HybridCache never mutates it: the updated cache comes back in `out.past_key_values`.
Router balancing: `model.update_router_biases(gamma)` after each optimiser step (the learner does
it through kpop.learner.balance); padding positions (attention_mask 0) do not count as load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from kpop.models.hybrid.cache import HybridCache
from kpop.models.hybrid.configuration import BailingMoeV2_5Config
from kpop.models.layers.lightning import LightningAttention
from kpop.models.layers.mla import MultiLatentAttention
from kpop.models.layers.mlp import SwiGLU
from kpop.models.layers.moe import MoE, MoEGate
from kpop.models.layers.norm import GroupRMSNorm, RMSNorm


def build_mlp(config: BailingMoeV2_5Config, layer_idx: int) -> nn.Module:
    if config.is_moe_layer(layer_idx):
        return MoE(config.hidden_size, config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size,
                   config.num_shared_experts or 0, config.n_group, config.topk_group, config.routed_scaling_factor)
    return SwiGLU(config.hidden_size, config.intermediate_size)


class DecoderLayer(nn.Module):
    def __init__(self, config: BailingMoeV2_5Config, layer_idx: int) -> None:
        super().__init__()
        self.is_mla = config.is_mla_layer(layer_idx)
        self.attention = MultiLatentAttention(config, layer_idx) if self.is_mla else LightningAttention(config, layer_idx)
        self.mlp = build_mlp(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h, positions, state=None, use_cache=False, attention_mask=None):
        attn, new_state = self.attention(self.input_layernorm(h), positions, state, use_cache, attention_mask)
        h = h + attn
        normed = self.post_attention_layernorm(h)
        mlp_out = self.mlp(normed, attention_mask) if isinstance(self.mlp, MoE) else self.mlp(normed)
        router_logits = None
        if isinstance(mlp_out, tuple):
            mlp_out, router_logits = mlp_out
        return h + mlp_out, new_state, router_logits


class MTPLayer(nn.Module):
    """Multi-token prediction block: combine norm(embedding of token t+1) with norm(h_t), one MLA+MoE layer."""

    def __init__(self, config: BailingMoeV2_5Config, layer_idx: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.enorm, self.hnorm = RMSNorm(h, config.rms_norm_eps), RMSNorm(h, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.input_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.attention = MultiLatentAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.mlp = MoE(h, config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size,
                       config.num_shared_experts or 0, config.n_group, config.topk_group, config.routed_scaling_factor)
        self.final_layernorm = RMSNorm(h, config.rms_norm_eps)

    def forward(self, embeds, h, positions, attention_mask=None):
        h = self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(h)], -1))
        h = h + self.attention(self.input_layernorm(h), positions, attention_mask=attention_mask)[0]
        h = h + self.mlp(self.post_attention_layernorm(h), attention_mask)[0]
        return self.final_layernorm(h)


class BailingMoeV2_5PreTrainedModel(PreTrainedModel):
    config_class = BailingMoeV2_5Config
    config: BailingMoeV2_5Config
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer", "MTPLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (RMSNorm, GroupRMSNorm)):
            init.ones_(module.weight)
        elif isinstance(module, MoEGate):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.expert_bias)


class BailingMoeV2_5Model(BailingMoeV2_5PreTrainedModel):
    def __init__(self, config: BailingMoeV2_5Config) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        n = config.num_hidden_layers
        layers = [DecoderLayer(config, i) for i in range(n)]
        layers += [MTPLayer(config, n + j) for j in range(config.num_nextn_predict_layers)]
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, inputs_embeds=None, **kwargs):
        embeds = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = embeds.shape[:2]
        n = self.config.num_hidden_layers
        cache = past_key_values if isinstance(past_key_values, HybridCache) else None
        past = 0 if cache is None else cache.seq_len
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=embeds.device).expand(B, T)
        h, new_states, router_logits = embeds, [], []
        for i, layer in enumerate(self.layers[:n]):
            state = None if cache is None else cache.layers[i]
            h, new_state, logits = layer(h, position_ids, state, use_cache, attention_mask)
            new_states.append(new_state)
            if logits is not None:
                router_logits.append(logits)
        new_cache = HybridCache(new_states, past + T) if use_cache else None
        out = BaseModelOutputWithPast(last_hidden_state=self.norm(h), past_key_values=new_cache)
        out["pre_norm_hidden"], out["embeds"], out["position_ids"], out["router_logits"] = h, embeds, position_ids, tuple(router_logits)
        return out


class BailingMoeV2_5ForCausalLM(BailingMoeV2_5PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: BailingMoeV2_5Config) -> None:
        super().__init__(config)
        self.model = BailingMoeV2_5Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def new_cache(self) -> HybridCache:
        return HybridCache.empty(self.config.num_hidden_layers)

    def update_router_biases(self, gamma: float) -> None:
        for module in self.modules():
            if isinstance(module, MoEGate):
                module.update_expert_bias(gamma)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, labels=None, inputs_embeds=None, mtp_logprobs=None, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache, inputs_embeds)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
            mtp = self.mtp_loss(out, labels, attention_mask)
            if mtp is not None:
                loss = loss + self.config.mtp_loss_scaling_factor * mtp
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)
        if mtp_logprobs is not None and self.config.num_nextn_predict_layers:
            if mtp_logprobs not in ("all", "layers"):
                raise ValueError(f"mtp_logprobs must be 'all' or 'layers', not {mtp_logprobs!r}")
            result["mtp_logprobs"] = self.mtp_token_logprobs(out, input_ids, attention_mask, trunk_grad=mtp_logprobs == "all")
        return result

    def mtp_loss(self, out, labels, attention_mask=None) -> torch.Tensor | None:
        """Mean over MTP depths j of CE(token t + j + 2 | h_t, tokens <= t + j + 1)."""
        n = self.config.num_hidden_layers
        mtp_layers = self.model.layers[n:]
        if len(mtp_layers) == 0:
            return None
        h, embeds, losses = out["pre_norm_hidden"], out["embeds"], []
        for j, layer in enumerate(mtp_layers):
            embeds = torch.cat([embeds[:, 1:], torch.zeros_like(embeds[:, :1])], 1)
            h = layer(embeds, h, out["position_ids"], attention_mask)
            shift = j + 2
            if labels.shape[1] <= shift:
                break
            logits = self.lm_head(h[:, :-shift])
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), labels[:, shift:].flatten(), ignore_index=-100))
        return torch.stack(losses).mean() if losses else None

    def mtp_token_logprobs(self, out, input_ids, attention_mask=None, trunk_grad: bool = True) -> torch.Tensor | None:
        """[D, B, T-1] log-probs of the MTP depths of the sequence's own tokens, in the layout of the
        next-token targets (index s is token s + 1): entry [j, b, s] = log p_j(input_ids[b, s + 1]),
        depth j predicting token t + j + 2 from position t (so s = t + j + 1); 0 for s < j + 1, where
        depth j makes no prediction. The LM head's output is upcast to FP32 before the softmax, as for
        the next-token log-probs. trunk_grad False: the trunk's hidden states and embeddings enter
        detached and the shared LM head is applied without a weight gradient, so only the MTP layers
        learn from these log-probs. None without MTP layers."""
        n = self.config.num_hidden_layers
        mtp_layers = self.model.layers[n:]
        if len(mtp_layers) == 0:
            return None
        h, embeds = out["pre_norm_hidden"], out["embeds"]
        if not trunk_grad:
            h, embeds = h.detach(), embeds.detach()
        B, T = input_ids.shape
        depths = []
        for j, layer in enumerate(mtp_layers):
            embeds = torch.cat([embeds[:, 1:], torch.zeros_like(embeds[:, :1])], 1)
            h = layer(embeds, h, out["position_ids"], attention_mask)
            shift = j + 2
            logp = torch.zeros(B, max(T - 1, 0), dtype=torch.float32, device=h.device)
            if T > shift:
                logits = self._head(h[:, :-shift], weight_grad=trunk_grad).float()
                picked = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, shift:, None]).squeeze(-1)
                logp = F.pad(picked, (shift - 1, 0))
            depths.append(logp)
        return torch.stack(depths)

    def _head(self, h: torch.Tensor, weight_grad: bool) -> torch.Tensor:
        """lm_head(h); weight_grad False: the gradient reaches h but not the head's parameters (their
        requires_grad is off only while this call records its graph)."""
        if weight_grad:
            return self.lm_head(h)
        params = [p for p in self.lm_head.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            return self.lm_head(h)
        finally:
            for p in params:
                p.requires_grad_(True)
