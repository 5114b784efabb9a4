"""Which engine serves a checkpoint, and building it.

`choose_backend(checkpoint)` applies the one engine rule (kpop.rollout.engine_choice: vLLM where
vLLM can run the model here, KPop's built-in engine otherwise) to the checkpoint's config.json and
the machine; `kpop run` uses the same rule for `rollout.engine.type: auto`. The user never
chooses; `--backend` exists only to force one for debugging.

`build_engine` imports the chosen engine lazily. The built-in engine is
`kpop.rollout.builtin_engine.BuiltinEngine(model_dir, ...)`; if that module is not installed the
error says so instead of falling back silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kpop.rollout.engine import Engine
from kpop.rollout.engine_choice import (
    EngineChoice,
    choose_engine,
    facts_from_checkpoint,
    has_gpu,
    read_config,
)

Backend = Literal["vllm", "builtin"]
BackendChoice = EngineChoice  # (kind, reason)


@dataclass(frozen=True)
class EngineOptions:
    kv_cache_gib: float = 0.25
    max_model_len: int | None = None
    seed: int = 0
    dtype: str = "float32"
    max_num_seqs: int = 128


def choose_backend(checkpoint: Path, gpu: bool | None = None) -> BackendChoice:
    facts = facts_from_checkpoint(checkpoint)
    return choose_engine(facts, has_gpu() if gpu is None else gpu)


def max_model_len(checkpoint: Path, options: EngineOptions) -> int:
    cfg = read_config(checkpoint)
    native = cfg.get("max_position_embeddings") or cfg.get("max_sequence_length") or 2048
    return min(options.max_model_len or native, native)


def build_engine(checkpoint: Path, choice: BackendChoice, options: EngineOptions) -> Engine:
    """Start the chosen engine (blocks while it loads; call it on the loop that will drive it)."""
    length = max_model_len(checkpoint, options)
    if choice.kind == "vllm":
        from kpop.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(str(checkpoint), kv_cache_gib=options.kv_cache_gib, enforce_eager=True,
                          dtype=options.dtype, seed=options.seed, max_model_len=length,
                          max_num_seqs=options.max_num_seqs)
    try:
        from kpop.rollout.builtin_engine import BuiltinEngine
    except ImportError as exc:
        raise RuntimeError(
            f"{checkpoint} needs KPop's built-in engine ({choice.reason}), but kpop.rollout.builtin_engine "
            f"is not available in this install ({exc})") from None
    device = "cuda" if has_gpu() else "cpu"
    return BuiltinEngine(str(checkpoint), device=device, dtype=options.dtype, seed=options.seed, max_model_len=length)
