"""weight_sync: state dict <-> bounded safetensors chunks, header reading and validation (no engine)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kpop.rollout.weight_sync import (
    TensorSpec,
    WeightSyncError,
    chunks_to_state_dict,
    expected_params_from_dir,
    read_chunk_header,
    state_dict_to_chunks,
    validate_update,
)


def make_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
        "model.norm.weight": torch.randn(16, generator=g),
        "lm_head.weight": torch.randn(50, 16, generator=g),
    }


def test_chunks_round_trip_and_respect_the_size_bound():
    sd = make_state_dict()
    chunks = state_dict_to_chunks(sd, max_chunk_bytes=4000)
    assert len(chunks) == 3  # 3200 B, 1024+64 B, 3200 B: tensors are grouped, never split
    back = chunks_to_state_dict(chunks)
    assert set(back) == set(sd)
    for name, t in sd.items():
        assert torch.equal(back[name], t)
    assert len(state_dict_to_chunks(sd, max_chunk_bytes=10**9)) == 1


def test_tied_tensors_serialise():
    sd = make_state_dict()
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # shared storage, as with tied embeddings
    back = chunks_to_state_dict(state_dict_to_chunks(sd, max_chunk_bytes=10**9))
    assert torch.equal(back["lm_head.weight"], back["model.embed_tokens.weight"])


def test_header_and_dir_specs(tmp_path):
    sd = make_state_dict()
    save_file(sd, str(tmp_path / "model.safetensors"))
    expected = expected_params_from_dir(tmp_path)
    assert expected["model.norm.weight"] == TensorSpec("F32", (16,))
    assert read_chunk_header(state_dict_to_chunks(sd, 10**9)[0]) == expected


def test_validate_rejects_wrong_updates(tmp_path):
    sd = make_state_dict()
    save_file(sd, str(tmp_path / "model.safetensors"))
    expected = expected_params_from_dir(tmp_path)
    assert set(validate_update(state_dict_to_chunks(sd, 1000), expected)) == set(sd)
    bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    validate_update(state_dict_to_chunks(bf16, 1000), expected)  # dtype is converted on load
    with pytest.raises(WeightSyncError, match="shape"):
        validate_update(state_dict_to_chunks({**sd, "model.norm.weight": torch.zeros(15)}, 1000), expected)
    with pytest.raises(WeightSyncError, match="missing"):
        validate_update(state_dict_to_chunks({k: v for k, v in sd.items() if k != "lm_head.weight"}, 1000), expected)
    with pytest.raises(WeightSyncError, match="unknown"):
        validate_update(state_dict_to_chunks({**sd, "extra.weight": torch.zeros(2)}, 1000), expected)
    with pytest.raises(WeightSyncError, match="dtype"):
        validate_update(state_dict_to_chunks({**sd, "model.norm.weight": torch.zeros(16, dtype=torch.int32)}, 1000), expected)
    dup = state_dict_to_chunks({"model.norm.weight": sd["model.norm.weight"]}, 1000)
    with pytest.raises(WeightSyncError, match="more than one chunk"):
        validate_update(state_dict_to_chunks(sd, 1000) + dup, expected)
    with pytest.raises(WeightSyncError, match="not a safetensors"):
        validate_update([b"xx"], expected)
