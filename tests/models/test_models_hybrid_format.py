"""The `bailing_hybrid` checkpoint format: parameter names, config fields, bit-exact save/load (ours and Auto)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from kpop.models.hybrid.checkpoint import load_checkpoint, save_checkpoint

# Per-layer parameter names of the public Ling-2.5 / Ring-2.5 checkpoints (HF
# modeling_bailing_moe_v2_5.py; the names stock vLLM's BailingMoeV25ForCausalLM.load_weights reads).
LIGHTNING = ["attention.query_key_value.weight", "attention.query_layernorm.weight", "attention.key_layernorm.weight",
             "attention.g_proj.weight", "attention.g_norm.weight", "attention.dense.weight"]
MLA = ["attention.q_proj.weight", "attention.kv_a_proj_with_mqa.weight", "attention.kv_a_layernorm.weight",
       "attention.kv_b_proj.weight", "attention.dense.weight"]
DENSE = ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
NORMS = ["input_layernorm.weight", "post_attention_layernorm.weight"]


def _moe(num_experts: int) -> list[str]:
    names = ["mlp.gate.weight", "mlp.gate.expert_bias"]
    names += [f"mlp.experts.{e}.{p}_proj.weight" for e in range(num_experts) for p in ("gate", "up", "down")]
    return names + [f"mlp.shared_experts.{p}_proj.weight" for p in ("gate", "up", "down")]


def test_parameter_names_match_public_format(tiny_model):
    cfg = tiny_model.config  # 4 layers, groups of 2: L M L M; layer 0 dense; one MTP layer
    expected = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.num_hidden_layers):
        attn = MLA if cfg.is_mla_layer(i) else LIGHTNING
        ffn = _moe(cfg.num_experts) if i >= cfg.first_k_dense_replace else DENSE
        expected |= {f"model.layers.{i}.{n}" for n in attn + ffn + NORMS}
    mtp = cfg.num_hidden_layers
    expected |= {f"model.layers.{mtp}.{n}" for n in MLA + _moe(cfg.num_experts) + NORMS}
    expected |= {f"model.layers.{mtp}.{n}.weight" for n in ("enorm", "hnorm", "eh_proj", "final_layernorm")}
    assert set(tiny_model.state_dict()) == expected
    shapes = tiny_model.state_dict()
    assert shapes["model.layers.0.attention.query_key_value.weight"].shape == (3 * 4 * 16, 64)
    assert shapes["model.layers.1.attention.kv_a_proj_with_mqa.weight"].shape == (16 + 8, 64)
    assert shapes["model.layers.1.attention.kv_b_proj.weight"].shape == (4 * (16 + 16), 16)
    assert shapes["model.layers.1.mlp.gate.expert_bias"].dtype == torch.float32


def test_vllm_model_file_uses_the_same_names():
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    text = (root / "model_executor/models/bailing_moe_linear.py").read_text()
    text += (root / "model_executor/layers/mamba/linear/bailing_linear_attn.py").read_text() if (root / "model_executor/layers/mamba/linear/bailing_linear_attn.py").exists() else ""
    registry = (root / "model_executor/models/registry.py").read_text()
    assert '"BailingMoeV2_5ForCausalLM"' in registry
    for name in ("word_embeddings", "attention.dense", "kv_a_proj_with_mqa", "kv_b_proj", "kv_a_layernorm",
                 "expert_bias", "shared_experts", "layer_group_size", "first_k_dense_replace", "routed_scaling_factor",
                 "n_group", "topk_group", "num_experts_per_tok", "moe_intermediate_size", "qk_rope_head_dim"):
        assert name in text, name


def test_config_json_has_public_fields(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "bailing_hybrid"
    assert cfg["architectures"] == ["BailingMoeV2_5ForCausalLM"]
    for key in ("layer_group_size", "group_norm_size", "first_k_dense_replace", "num_experts", "num_shared_experts",
                "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "moe_router_enable_expert_bias",
                "score_function", "router_dtype", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                "v_head_dim", "partial_rotary_factor", "use_qk_norm", "head_dim", "rope_theta", "rms_norm_eps",
                "num_nextn_predict_layers", "moe_intermediate_size", "lightning_decay_offset"):
        assert key in cfg, key
    assert cfg["auto_map"]["AutoConfig"] == "configuration_bailing_moe_v2_5.BailingMoeV2_5Config"
    assert (tmp_path / "configuration_bailing_moe_v2_5.py").exists()
    assert (tmp_path / "model.safetensors").exists()


def _assert_bit_exact(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_save_load_roundtrip_ours_is_bit_exact(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    _assert_bit_exact(tiny_model, loaded)
    ids = torch.randint(0, 320, (1, 9))
    with torch.no_grad():
        assert torch.equal(tiny_model(ids).logits, loaded(ids).logits)


def test_save_load_roundtrip_through_auto_classes(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    import kpop.models.hybrid  # noqa: F401  (registers bailing_hybrid)

    save_checkpoint(tiny_model, tmp_path / "ours")
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert type(auto).__name__ == "BailingMoeV2_5ForCausalLM"
    assert AutoConfig.from_pretrained(tmp_path / "ours").model_type == "bailing_hybrid"
    _assert_bit_exact(tiny_model, auto)
    auto.save_pretrained(tmp_path / "hf")  # transformers' own writer, read back by ours
    _assert_bit_exact(tiny_model, load_checkpoint(tmp_path / "hf"))


def test_a_checkpoints_tokenizer_loads_without_asking_on_stdin(tiny_model, tmp_path):
    """The config's `auto_map` (for vLLM's trust_remote_code) must not make transformers stop on
    stdin to ask whether to run the folder's code: `kpop eval` and `kpop serve` users would see a
    [y/N] prompt and wait. The child's stdin is a pipe that gets no answer; transformers prints the
    prompt before it reads, so the prompt shows in the child's output whenever it asks."""
    import subprocess
    import sys

    from kpop.models.tokenizer import train_tokenizer

    train_tokenizer([f"tool call {i} for order {i * 7}" for i in range(200)], 300, tmp_path)
    save_checkpoint(tiny_model, tmp_path)
    assert "auto_map" in json.loads((tmp_path / "config.json").read_text())
    code = ("from kpop.models.tokenizer import load_tokenizer; "
            f"print(load_tokenizer({str(tmp_path)!r})('order 14').input_ids)")
    child = subprocess.run([sys.executable, "-c", code], stdin=subprocess.PIPE, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    assert "[y/N]" not in child.stdout + child.stderr
    assert child.stdout.strip().startswith("[")
