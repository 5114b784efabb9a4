"""Whole-model behaviour: layer layout, incremental decoding == full sequence, MLA latent cache, padding."""

from __future__ import annotations

import torch

from kpop.models.hybrid.cache import HybridCache
from kpop.models.layers.lightning import LightningAttention
from kpop.models.layers.mla import MLACache, MultiLatentAttention


def test_layer_layout_follows_groups(tiny_config):
    from kpop.models.hybrid.presets import preset_config

    cfg = preset_config("tiny", num_hidden_layers=19, layer_group_size=8)
    assert [i for i in range(19) if cfg.is_mla_layer(i)] == [7, 15, 16, 17, 18]
    assert [cfg.is_moe_layer(i) for i in range(3)] == [False, True, True]
    flash = preset_config("flash")
    assert [i for i in range(32) if flash.is_mla_layer(i)] == [7, 15, 23, 31]


def test_incremental_decoding_reproduces_full_logits(tiny_model):
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = tiny_model(ids).logits
        out = tiny_model(ids[:, :9], past_key_values=tiny_model.new_cache(), use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(9, 21):
            out = tiny_model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    assert cache.seq_len == 21
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-4
    kinds = [type(e) for e in cache.layers]
    assert kinds == [torch.Tensor, MLACache, torch.Tensor, MLACache]
    assert cache.layers[0].shape == (2, 4, 16, 16)  # d x d state per head
    assert cache.layers[1].latent.shape == (2, 21, 16) and cache.layers[1].k_rope.shape == (2, 21, 8)


def test_chunked_prefill_of_lightning_matches_recurrent(tiny_config):
    torch.manual_seed(0)
    layer = LightningAttention(tiny_config, layer_idx=0)
    x = torch.randn(2, 80, tiny_config.hidden_size)
    pos = torch.arange(80).expand(2, 80)
    outs = {}
    for mode in ("chunk", "recurrent", "naive"):
        layer.mode, layer.chunk_size = mode, 16
        outs[mode] = layer(x, pos, use_cache=True)
    for mode in ("chunk", "recurrent"):
        assert (outs[mode][0] - outs["naive"][0]).abs().max() < 1e-5
        assert (outs[mode][1] - outs["naive"][1]).abs().max() < 1e-4  # state entries reach ~10 in fp32


def test_mla_latent_cache_reproduces_uncached(tiny_config):
    torch.manual_seed(0)
    for q_lora_rank in (None, 12):
        tiny_config.q_lora_rank = q_lora_rank
        mla = MultiLatentAttention(tiny_config, layer_idx=1)
        x = torch.randn(2, 13, tiny_config.hidden_size)
        pos = torch.arange(13).expand(2, 13)
        full, _ = mla(x, pos)
        full_absorbed, _ = mla(x, pos, absorb=True)
        assert (full - full_absorbed).abs().max() < 1e-5
        out, cache = mla(x[:, :6], pos[:, :6], use_cache=True)
        pieces = [out]
        for t in range(6, 13):
            out, cache = mla(x[:, t : t + 1], pos[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out)
        assert (torch.cat(pieces, 1) - full).abs().max() < 1e-5
        # the cache holds only the latent and the single shared rope key
        assert set(vars(cache)) == {"latent", "k_rope"}
        assert cache.latent.shape == (2, 13, tiny_config.kv_lora_rank)


def test_mla_matches_explicit_per_head_softmax(tiny_config):
    torch.manual_seed(1)
    tiny_config.q_lora_rank = None
    mla = MultiLatentAttention(tiny_config, layer_idx=1)
    x = torch.randn(1, 5, tiny_config.hidden_size)
    pos = torch.arange(5)[None]
    from kpop.models.layers.rope import apply_interleaved, rope_angles

    cos, sin = rope_angles(pos, mla.rope, mla.rope_theta)
    q_nope, q_rope = mla.queries(x, cos, sin)
    c, k_rope = mla.latents(x, cos, sin)
    kv = mla.kv_b_proj(c).view(1, 5, mla.num_heads, -1)
    k_nope, v = kv[..., : mla.nope], kv[..., mla.nope :]
    outs = []
    for h in range(mla.num_heads):
        s = (q_nope[0, :, h] @ k_nope[0, :, h].T + q_rope[0, :, h] @ k_rope[0].T) / (mla.nope + mla.rope) ** 0.5
        s = s.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
        outs.append(s.softmax(-1) @ v[0, :, h])
    expected = mla.dense(torch.cat(outs, -1))[None]
    assert (mla(x, pos)[0] - expected).abs().max() < 1e-5
    assert torch.allclose(apply_interleaved(q_rope, cos * 0 + 1, sin * 0), q_rope)


def test_cache_select_and_stack_roundtrip(tiny_model):
    ids = torch.randint(0, 320, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = tiny_model(ids, past_key_values=tiny_model.new_cache(), use_cache=True).past_key_values
        joined = HybridCache.stack([cache.select(torch.tensor([0, 1])), cache.select(torch.tensor([2]))])
        nxt = torch.tensor([[5], [6], [7]])
        a = tiny_model(nxt, past_key_values=cache, use_cache=True).logits
        b = tiny_model(nxt, past_key_values=joined, use_cache=True).logits
    assert torch.equal(a, b)
    assert cache.nbytes() > 0


def test_left_padding_does_not_change_the_real_tokens(tiny_model):
    ids = torch.randint(1, 320, (1, 8), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 8)], 1).long()
    pos = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.arange(8)[None]], 1)
    with torch.no_grad():
        ref = tiny_model(ids).logits
        got = tiny_model(padded, attention_mask=mask, position_ids=pos).logits[:, 3:]
    assert (ref - got).abs().max() < 1e-4


def test_training_loss_backpropagates_including_mtp(tiny_model):
    tiny_model.train()
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(4))
    out = tiny_model(ids, labels=ids)
    base = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert out.loss > base  # the MTP term is added
    out.loss.backward()
    mtp = tiny_model.model.layers[tiny_model.config.num_hidden_layers]
    assert mtp.eh_proj.weight.grad is not None and mtp.eh_proj.weight.grad.abs().sum() > 0
    assert tiny_model.model.layers[0].attention.query_key_value.weight.grad.abs().sum() > 0
