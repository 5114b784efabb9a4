"""`model:` and `tokenizer:` sections: which policy network is trained and served.

Variants are chosen by `type`. The defaults are the tiny CPU model of the quickstart.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kpop.spec.base import StrictModel, tagged_union


def _existing_dir(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        raise ValueError(f"directory {str(path)!r} does not exist (give a Hugging Face checkpoint folder, or leave it unset to build a fresh model)")
    return path


class LlamaModelSpec(StrictModel):
    type: Literal["llama"] = Field("llama", description="A Llama-architecture decoder (Hugging Face LlamaForCausalLM).")
    path: Path | None = Field(None, description="Existing Hugging Face checkpoint folder; unset builds a fresh model from the sizes below.")
    hidden_size: int = Field(128, ge=8, le=65536, description="Model width.")
    num_layers: int = Field(4, ge=1, le=512, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, le=512, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, le=512, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(384, ge=8, le=262144, description="SwiGLU hidden width.")
    max_position_embeddings: int = Field(512, ge=16, le=1048576, description="Longest sequence the model accepts.")
    init_std: float = Field(0.06, gt=0, le=1.0, description="Std of the normal initialisation of a fresh model's weights (HF's 0.02 suits widths near 1024; at width 128 it starts attention almost uniform and the tiny model learns to copy late, at a seed-dependent step).")

    _check_path = field_validator("path")(_existing_dir)

    @model_validator(mode="after")
    def _heads_divide(self) -> "LlamaModelSpec":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


class HybridModelSpec(StrictModel):
    type: Literal["hybrid"] = Field("hybrid", description="The hybrid Lightning-Attention / MLA MoE model (bailing_hybrid, kpop.models.hybrid).")
    path: Path | None = Field(None, description="Existing bailing_hybrid checkpoint folder; unset builds a fresh model from the preset.")
    preset: Literal["tiny", "flash", "1t"] = Field("tiny", description="Size preset; flash and 1t are the published sizes (configs only, GPU clusters).")
    hidden_size: int | None = Field(None, ge=8, le=65536, description="Override of the preset's model width.")
    num_layers: int | None = Field(None, ge=1, le=512, description="Override of the number of decoder layers (keep a multiple of layer_group_size).")
    num_heads: int | None = Field(None, ge=1, le=512, description="Override of the attention heads.")
    layer_group_size: int | None = Field(None, ge=1, le=64, description="Override of M: one MLA layer closes each group of M layers.")
    num_experts: int | None = Field(None, ge=2, le=4096, description="Override of the routed experts per MoE layer.")
    num_mtp_layers: int | None = Field(None, ge=0, le=8, description="Override of the multi-token-prediction layers.")
    max_position_embeddings: int | None = Field(None, ge=16, le=1048576, description="Override of the longest sequence the model accepts (its MLA layers' RoPE table; the Lightning layers have no position limit; tiny: 512).")
    init_std: float = Field(0.06, gt=0, le=1.0, description="Std of the normal initialisation of a fresh model's weights (as for llama: 0.02 starts a narrow model's attention almost uniform).")

    _check_path = field_validator("path")(_existing_dir)


ModelSpec = tagged_union(LlamaModelSpec, HybridModelSpec)


class TokenizerSpec(StrictModel):
    path: Path | None = Field(None, description="Existing tokenizer folder (tokenizer.json + chat template); unset trains a BPE tokenizer on the environments' texts.")
    vocab_size: int = Field(1024, ge=64, le=262144, description="Vocabulary size when training a tokenizer.")

    _check_path = field_validator("path")(_existing_dir)
