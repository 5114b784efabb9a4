import pytest
import torch

from kpop.models.tiny_llama import build_tiny_llama
from kpop.spec.model import LlamaModelSpec


@pytest.mark.parametrize("std", [0.02, 0.06])
def test_init_std_sets_the_weight_scale(tiny_tokenizer, tmp_path, std):
    from transformers import AutoModelForCausalLM

    spec = LlamaModelSpec(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, init_std=std)
    model = AutoModelForCausalLM.from_pretrained(str(build_tiny_llama(spec, tiny_tokenizer, tmp_path, seed=0)))
    assert model.config.initializer_range == std
    weights = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith("proj.weight")])
    assert weights.std().item() == pytest.approx(std, rel=0.05)
