"""Convert a Llama / Qwen2 / Qwen3-style GQA checkpoint into the hybrid layout (reference steps 1 and 3).

Layer i becomes MLA when `(i + 1) % layer_group_size == 0` (or past the last group), else Lightning.

Lightning conversion (step 1), per layer:
  * `query_key_value` = [W_q ; widen(W_k) ; widen(W_v)] (biases likewise). Widening to full
    multi-head: head h with h % (H / Hkv) == 0 keeps GQA kv head h / (H / Hkv) exactly; the other
    heads are new parameters, drawn N(0, initializer_range^2) (`kv_widen="random"`, the reference's
    choice) or copies of their group's kv head (`kv_widen="repeat"`, function-preserving for q.k).
  * `query_layernorm` / `key_layernorm` = the source's q_norm / k_norm when it has them (Qwen3),
    else ones (new); `dense` = o_proj; `g_proj` random, `g_norm` ones (new).
MLA conversion (step 3): QK-norm folded with calibration statistics (`qk_fold.py`), then
`mla_convert.convert_to_mla`. Calibration inputs are the attention inputs of the source model on
`calibration_tokens` random token ids (or ids given by the caller).
Everything else (embeddings, norms, dense SwiGLU MLPs, lm_head) is copied; all layers keep a
dense FFN (`first_k_dense_replace = num_hidden_layers`). The freezing schedule of the warm-up
phases is written as `migration.json` next to the converted weights, and the source's tokenizer
with its chat template (when it has one) as well: the folder is a `model.path` a run trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kpop.models.hybrid.checkpoint import save_checkpoint
from kpop.models.hybrid.configuration import BailingMoeV2_5Config
from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM
from kpop.models.migrate.freezing import schedule_description
from kpop.models.migrate.mla_convert import GQAWeights, convert_to_mla
from kpop.models.migrate.qk_fold import fold_qk_norm


def target_config(src, layer_group_size: int = 8, kv_lora_rank: int | None = None, partial_rotary_factor: float = 0.5) -> BailingMoeV2_5Config:
    d = getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads
    rope = int(d * partial_rotary_factor)
    full_rank = src.num_key_value_heads * (2 * d - rope)
    rope_theta = getattr(src, "rope_theta", None) or (getattr(src, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return BailingMoeV2_5Config(
        vocab_size=src.vocab_size, hidden_size=src.hidden_size, intermediate_size=src.intermediate_size,
        num_hidden_layers=src.num_hidden_layers, num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_attention_heads, head_dim=d, rms_norm_eps=src.rms_norm_eps,
        max_position_embeddings=src.max_position_embeddings, rope_theta=rope_theta,
        tie_word_embeddings=bool(getattr(src, "tie_word_embeddings", False)),
        use_qkv_bias=bool(getattr(src, "attention_bias", False) or src.model_type == "qwen2"),
        first_k_dense_replace=src.num_hidden_layers, num_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1,
        layer_group_size=layer_group_size, group_norm_size=1, partial_rotary_factor=partial_rotary_factor,
        qk_rope_head_dim=rope, qk_nope_head_dim=d - rope, v_head_dim=d, q_lora_rank=None,
        kv_lora_rank=min(kv_lora_rank or full_rank, full_rank), num_nextn_predict_layers=0,
        initializer_range=getattr(src, "initializer_range", 0.02),
        bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id, pad_token_id=src.pad_token_id,
    )


def widen_kv(w: torch.Tensor, heads: int, kv_heads: int, d: int, mode: str, std: float, gen: torch.Generator) -> torch.Tensor:
    """[Hkv d, ...] -> [H d, ...]: kept heads at h % rep == 0, new heads random or repeated."""
    rep = heads // kv_heads
    src = w.view(kv_heads, d, *w.shape[1:])
    out = src.repeat_interleave(rep, dim=0).clone()
    if mode == "random":
        fresh = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(w.dtype) * (std if w.dim() > 1 else 0.0)
        new = torch.tensor([h % rep != 0 for h in range(heads)])
        out[new] = fresh[new]
    elif mode != "repeat":
        raise ValueError(f"kv_widen must be 'random' or 'repeat', not {mode!r}")
    return out.reshape(heads * d, *w.shape[1:])


def calibration_inputs(src_model, ids: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """Attention inputs (after input_layernorm) of the chosen source layers, flattened to [N, hidden]."""
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for i in layers:
        norm = src_model.model.layers[i].input_layernorm
        hooks.append(norm.register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, out.detach().flatten(0, 1))))
    try:
        with torch.no_grad():
            src_model(ids)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _lightning_layer(sd, p, cfg, kv_heads, kv_widen, gen) -> dict[str, torch.Tensor]:
    H, d = cfg.num_attention_heads, cfg.head_dim
    std = cfg.initializer_range
    out = {"query_key_value.weight": torch.cat([sd[f"{p}.q_proj.weight"],
                                                widen_kv(sd[f"{p}.k_proj.weight"], H, kv_heads, d, kv_widen, std, gen),
                                                widen_kv(sd[f"{p}.v_proj.weight"], H, kv_heads, d, kv_widen, std, gen)]),
           "dense.weight": sd[f"{p}.o_proj.weight"]}
    if f"{p}.q_proj.bias" in sd:
        out["query_key_value.bias"] = torch.cat([sd[f"{p}.q_proj.bias"],
                                                 widen_kv(sd[f"{p}.k_proj.bias"], H, kv_heads, d, kv_widen, std, gen),
                                                 widen_kv(sd[f"{p}.v_proj.bias"], H, kv_heads, d, kv_widen, std, gen)])
    if f"{p}.q_norm.weight" in sd:
        out["query_layernorm.weight"], out["key_layernorm.weight"] = sd[f"{p}.q_norm.weight"], sd[f"{p}.k_norm.weight"]
    return out


def _mla_layer(sd, p, cfg, kv_heads, x) -> dict[str, torch.Tensor]:
    H, d = cfg.num_attention_heads, cfg.head_dim
    wq, wk = sd[f"{p}.q_proj.weight"], sd[f"{p}.k_proj.weight"]
    if f"{p}.q_norm.weight" in sd:
        wq, _ = fold_qk_norm(wq, sd[f"{p}.q_norm.weight"], x, H, eps=cfg.rms_norm_eps)
        wk, _ = fold_qk_norm(wk, sd[f"{p}.k_norm.weight"], x, kv_heads, eps=cfg.rms_norm_eps)
    w = GQAWeights(wq, wk, sd[f"{p}.v_proj.weight"], sd[f"{p}.o_proj.weight"], sd.get(f"{p}.k_proj.bias"), sd.get(f"{p}.v_proj.bias"))
    return convert_to_mla(w, x, H, kv_heads, d, cfg.qk_rope_head_dim, cfg.kv_lora_rank)


def convert_model(src_model, layer_group_size: int = 8, kv_widen: str = "random", kv_lora_rank: int | None = None,
                  calibration_ids: torch.Tensor | None = None, seed: int = 0) -> BailingMoeV2_5ForCausalLM:
    src_cfg = src_model.config
    cfg = target_config(src_cfg, layer_group_size, kv_lora_rank)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BailingMoeV2_5ForCausalLM(cfg)
    sd = src_model.state_dict()
    if calibration_ids is None:
        calibration_ids = torch.randint(0, cfg.vocab_size, (4, 64), generator=gen)
    mla_layers = [i for i in range(cfg.num_hidden_layers) if cfg.is_mla_layer(i)]
    calib = calibration_inputs(src_model, calibration_ids, mla_layers)
    new = {"model.word_embeddings.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
            new[f"{p}.{name}"] = sd[f"{p}.{name}"]
        attn = _mla_layer(sd, f"{p}.self_attn", cfg, src_cfg.num_key_value_heads, calib[i]) if i in calib else \
            _lightning_layer(sd, f"{p}.self_attn", cfg, src_cfg.num_key_value_heads, kv_widen, gen)
        new.update({f"{p}.attention.{k}": v for k, v in attn.items()})
    state = model.state_dict()
    for name, tensor in new.items():
        state[name] = tensor.to(state[name].dtype)
    for name in state:
        if name.endswith("dense.bias") or name.endswith("q_a_proj.bias"):
            state[name] = torch.zeros_like(state[name])  # no source counterpart; zero keeps the function
    model.load_state_dict(state)
    return model.eval()


def migrate_checkpoint(src: str | Path, dst: str | Path, layer_group_size: int = 8, kv_widen: str = "random",
                       kv_lora_rank: int | None = None, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    src_model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = convert_model(src_model, layer_group_size, kv_widen, kv_lora_rank, seed=seed)
    dst = save_checkpoint(model, dst)
    copy_tokenizer(src, dst)
    (dst / "migration.json").write_text(json.dumps({"source": str(src), "kv_widen": kv_widen, **schedule_description(model)}, indent=1))
    return dst


def copy_tokenizer(src: str | Path, dst: Path) -> bool:
    """Save the source's tokenizer (and its chat template) next to the converted weights, so the
    folder trains and serves as it is; False when the source has none."""
    if not any((Path(src) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return False
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    return True
