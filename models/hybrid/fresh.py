"""A freshly initialised hybrid model saved next to its tokenizer: the starting folder of a run
with `model: {type: hybrid}` and no `model.path` (kpop.bootstrap).

The config is the spec's preset plus its overrides (presets.config_from_spec), with the
vocabulary and special-token ids of the tokenizer the run trains with. The folder is in the public
`bailing_hybrid` layout (checkpoint.save_checkpoint) plus the tokenizer files and chat template,
so the learner (`AutoModelForCausalLM`, after kpop.models.hybrid registers the classes), the
built-in engine and stock vLLM on GPU all load it. Deterministic in `seed`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kpop.models.hybrid.checkpoint import save_checkpoint
from kpop.models.hybrid.configuration import BailingMoeV2_5Config
from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM
from kpop.models.hybrid.presets import config_from_spec


def hybrid_config(spec, tokenizer) -> BailingMoeV2_5Config:
    """The spec's preset + overrides, sized to `tokenizer` (a `HybridModelSpec`, kpop.spec.model)."""
    config = config_from_spec(spec)
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def build_hybrid(spec, tokenizer, out_dir: str | Path, seed: int = 0) -> Path:
    """Initialise a hybrid model from `spec`, save it with `tokenizer` into `out_dir`, return the folder."""
    torch.manual_seed(seed)
    model = BailingMoeV2_5ForCausalLM(hybrid_config(spec, tokenizer))
    out = save_checkpoint(model, out_dir)
    tokenizer.save_pretrained(str(out))
    return out
