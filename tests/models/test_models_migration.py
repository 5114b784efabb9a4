"""Migration GQA -> hybrid: Lightning layers start from the GQA weights; QK-norm folding keeps the
attention scores on calibration data; MLA conversion reconstructs keys/values; CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from kpop.models.migrate.freezing import apply_phase
from kpop.models.migrate.gqa_to_hybrid import convert_model
from kpop.models.migrate.mla_convert import GQAWeights, convert_to_mla, interleave_permutation
from kpop.models.migrate.qk_fold import fold_qk_norm


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("kv_widen", ["random", "repeat"])
def test_lightning_layers_start_from_gqa_weights(llama_dir, kv_widen):
    src = _load(llama_dir)
    model = convert_model(src, layer_group_size=2, kv_widen=kv_widen)
    s, t = src.state_dict(), model.state_dict()
    d, H, rep = 16, 4, 2
    for i in (0, 2):  # Lightning layers (1 and 3 are MLA)
        qkv = t[f"model.layers.{i}.attention.query_key_value.weight"].view(3, H, d, 64)
        assert torch.equal(qkv[0].reshape(-1, 64), s[f"model.layers.{i}.self_attn.q_proj.weight"])
        for j, name in ((1, "k_proj"), (2, "v_proj")):
            kv = s[f"model.layers.{i}.self_attn.{name}.weight"].view(2, d, 64)
            for h in range(H):
                if h % rep == 0 or kv_widen == "repeat":
                    assert torch.equal(qkv[j, h], kv[h // rep])
                else:  # new parameters, freshly initialised
                    assert not torch.equal(qkv[j, h], kv[h // rep])
                    assert 0.01 < qkv[j, h].std() < 0.03
        assert torch.equal(t[f"model.layers.{i}.attention.dense.weight"], s[f"model.layers.{i}.self_attn.o_proj.weight"])
        assert torch.equal(t[f"model.layers.{i}.attention.query_layernorm.weight"], torch.ones(d))
        assert torch.equal(t[f"model.layers.{i}.mlp.down_proj.weight"], s[f"model.layers.{i}.mlp.down_proj.weight"])
    assert torch.equal(t["model.word_embeddings.weight"], s["model.embed_tokens.weight"])


def test_qk_norm_folding_keeps_scores_on_calibration_data():
    torch.manual_seed(0)
    hidden, heads, kv_heads, d, n = 128, 4, 2, 64, 512
    wq, wk = torch.randn(heads * d, hidden) * 0.05, torch.randn(kv_heads * d, hidden) * 0.05
    gq, gk = 1 + 0.2 * torch.randn(d), 1 + 0.2 * torch.randn(d)
    x = torch.randn(n, hidden)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()  # attention inputs come out of an RMSNorm

    def normed(w, g, h):
        y = (x @ w.T).view(n, h, d)
        return g * y / (y.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()

    q_ref, k_ref = normed(wq, gq, heads), normed(wk, gk, kv_heads)
    fq, _ = fold_qk_norm(wq, gq, x, heads)
    fk, _ = fold_qk_norm(wk, gk, x, kv_heads)
    q_new, k_new = (x @ fq.T).view(n, heads, d), (x @ fk.T).view(n, kv_heads, d)
    for h in range(heads):
        ref = q_ref[:, h] @ k_ref[:, h // 2].T
        got = q_new[:, h] @ k_new[:, h // 2].T
        rel = (got - ref).abs().mean() / ref.abs().mean()
        assert rel < 0.12  # stated tolerance: mean relative score error < 12% (measured 0.098-0.102 at d = 64)
    # exact on a calibration set of one token (its RMS is the calibration mean)
    one = x[:1]
    fq1, _ = fold_qk_norm(wq, gq, one, heads)
    assert torch.allclose((one @ fq1.T).view(heads, d), q_ref[0], atol=1e-5)


def test_mla_conversion_reconstructs_keys_values_and_scores():
    torch.manual_seed(0)
    hidden, heads, d, rope = 32, 4, 8, 4
    w = GQAWeights(torch.randn(heads * d, hidden), torch.randn(d, hidden), torch.randn(d, hidden), torch.randn(hidden, heads * d))
    x = torch.randn(200, hidden)
    full_rank = 2 * d - rope
    mla = convert_to_mla(w, x, heads, 1, d, rope, full_rank)
    latent = x @ mla["kv_a_proj_with_mqa.weight"][:full_rank].T
    kv = (latent @ mla["kv_b_proj.weight"].T).view(200, heads, 2 * d - rope)
    k_src, v_src = x @ w.k.T, x @ w.v.T
    assert torch.allclose(kv[:, 0, : d - rope], k_src[:, rope:], atol=1e-4)  # no-rope key dims
    assert torch.allclose(kv[:, 3, d - rope :], v_src, atol=1e-4)
    # RoPE part: with one kv head the PCA mixing is a sign, so q_rope . k_rope is unchanged
    perm = interleave_permutation(rope)
    k_rope = x @ mla["kv_a_proj_with_mqa.weight"][full_rank:].T
    q = (x @ mla["q_proj.weight"].T).view(200, heads, d)
    q_src = (x @ w.q.T).view(200, heads, d)
    assert torch.allclose(k_rope.abs(), k_src[:, :rope][:, perm].abs(), atol=1e-4)
    assert torch.allclose(q[:, :, d - rope :] @ k_rope[0], q_src[:, :, :rope] @ k_src[0, :rope], atol=1e-3)


def test_freezing_phases(llama_dir):
    model = convert_model(_load(llama_dir), layer_group_size=2)
    linear = apply_phase(model, "linear_warmup")
    assert linear and all(".attention.query_key_value" in n or "layernorm" in n for n in linear)
    assert all(int(n.split(".")[2]) in (0, 2) for n in linear)
    assert not model.lm_head.weight.requires_grad
    mla = apply_phase(model, "mla_warmup")
    assert {int(n.split(".")[2]) for n in mla} == {1, 3} and all(".attention." in n for n in mla)
    assert len(apply_phase(model, "full")) == len(list(model.parameters()))


def test_migrate_cli_end_to_end(llama_dir, tmp_path):
    import argparse

    from kpop.cli import migrate_cmd

    # the command module on its own: kpop.cli.main also imports other teams' commands
    parser = argparse.ArgumentParser()
    migrate_cmd.add_arguments(parser)
    dst = tmp_path / "hybrid"
    assert migrate_cmd.run(parser.parse_args([str(llama_dir), str(dst), "--layer-group-size", "2"])) == 0
    from transformers import AutoModelForCausalLM

    import kpop.models.hybrid  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(dst)
    assert model.config.model_type == "bailing_hybrid" and model.config.is_mla_layer(1)
    schedule = json.loads((dst / "migration.json").read_text())
    assert set(schedule["phases"]) == {"linear_warmup", "mla_warmup"}
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 128, (1, 12))).logits).all()
