"""Fixtures of the learner tests: a tiny Llama (hidden 64, 2 layers, vocab 100) with a local BPE tokenizer."""

from __future__ import annotations

import pytest

CORPUS = ["The answer is 42. Let me check: 6 times 7 is 42! Done?",
          "First, add the numbers; then divide.\nSo x = 3.5, y = 2.",
          "Is it right? Yes. No! Maybe; maybe not: fine, ok."] * 20


def build_tiny_model_dir(path, seed: int = 0, hidden: int = 64, layers: int = 2):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=100, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=100, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(path))
    fast.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def learner_model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("learner_tiny_llama"))


@pytest.fixture(scope="session")
def learner_tokenizer(learner_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(learner_model_dir))


@pytest.fixture(scope="session")
def learner_hybrid_dir(tmp_path_factory, learner_model_dir):
    """A fresh tiny hybrid model (Lightning + MLA, MoE layers 1-3) with the same tokenizer, built
    as `kpop run` builds one (init std 0.2: routing far from balanced at the start)."""
    from transformers import AutoTokenizer

    from kpop.models.hybrid.fresh import build_hybrid
    from kpop.spec import load_spec

    tokenizer = AutoTokenizer.from_pretrained(str(learner_model_dir))
    spec = load_spec(None, ["model.type=hybrid", "model.init_std=0.2"]).model
    return build_hybrid(spec, tokenizer, tmp_path_factory.mktemp("learner_hybrid"), seed=0)
