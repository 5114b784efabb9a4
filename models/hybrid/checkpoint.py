"""Save and load hybrid checkpoints in the public `bailing_hybrid` layout (config.json + safetensors).

`save_checkpoint(model, dir)` writes config.json (model_type `bailing_hybrid`, architectures
`["BailingMoeV2_5ForCausalLM"]`, `auto_map.AutoConfig`), `model.safetensors` with the public
parameter names, and a copy of configuration.py as `configuration_bailing_moe_v2_5.py`, so that stock
vLLM (`--trust-remote-code`) can read the config without KPop. `load_checkpoint(dir)` rebuilds the
model from those files with a strict state-dict load (no transformers loading machinery), so the
round trip is bit-exact. Expert biases (`mlp.gate.expert_bias`) are saved as float32 buffers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kpop.models.hybrid import configuration
from kpop.models.hybrid.configuration import BailingMoeV2_5Config
from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM

CONFIG_MODULE = "configuration_bailing_moe_v2_5"


def save_checkpoint(model: BailingMoeV2_5ForCausalLM, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = {"AutoConfig": f"{CONFIG_MODULE}.BailingMoeV2_5Config"}
    model.config.save_pretrained(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    write_remote_code(path)
    return path


def write_remote_code(path: str | Path) -> None:
    """Make a `bailing_hybrid` folder written by other means (e.g. `save_pretrained` in the
    learner's checkpoints) readable without KPop: `auto_map` in config.json and the config module."""
    path = Path(path)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoConfig": f"{CONFIG_MODULE}.BailingMoeV2_5Config"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(configuration.__file__, path / f"{CONFIG_MODULE}.py")


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None) -> BailingMoeV2_5ForCausalLM:
    path = Path(path)
    config_dict = json.loads((path / "config.json").read_text())
    config = BailingMoeV2_5Config.from_dict(config_dict)
    model = BailingMoeV2_5ForCausalLM(config)
    state = load_file(str(path / "model.safetensors"))
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.word_embeddings.weight"]
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
