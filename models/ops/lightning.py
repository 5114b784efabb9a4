"""Lightning Attention entry point: picks fla's Triton `simple_gla` kernels on GPU, PyTorch on CPU.

`lightning_attention(q, k, v, g, mode=...)` with q, k [B, T, H, K], v [B, T, H, V], g [H] the
constant log-decay (fla's `g_gamma`), initial/final state [B, H, K, V] (fla's key-major layout).

  * mode "chunk"     -> fla `chunk_simple_gla`          | `chunked_lightning_attention`
  * mode "recurrent" -> fla `fused_recurrent_simple_gla` | `recurrent_lightning_attention`
  * mode "naive"     -> `naive_lightning_attention` (reference, quadratic, any device)

The backend is chosen per call from the device of q and whether `fla.ops.simple_gla` imports;
`backend="torch"` forces the PyTorch path (tests compare the two). The first choice of each kind is
logged once at INFO with its reason.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Literal

import torch

from kpop.models.ops.lightning_chunked import chunked_lightning_attention
from kpop.models.ops.lightning_naive import naive_lightning_attention
from kpop.models.ops.lightning_recurrent import recurrent_lightning_attention

logger = logging.getLogger(__name__)
Mode = Literal["chunk", "recurrent", "naive"]
Backend = Literal["auto", "fla", "torch"]
_logged: set[str] = set()


@cache
def _fla_import_error() -> str | None:
    try:
        import fla.ops.simple_gla  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (any failure, missing triton or driver, means: use PyTorch)
        return f"{type(exc).__name__}: {exc}"
    return None


def _log_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info(message)


def choose_backend(device: torch.device, backend: Backend = "auto") -> Literal["fla", "torch"]:
    if backend == "torch":
        _log_once("torch-forced", "Lightning Attention: PyTorch implementation (forced by caller)")
        return "torch"
    if device.type != "cuda":
        if backend == "fla":
            raise RuntimeError("fla's simple_gla kernels need a CUDA device")
        _log_once("torch-cpu", f"Lightning Attention: PyTorch implementation (device {device.type}; fla kernels are Triton/CUDA only)")
        return "torch"
    error = _fla_import_error()
    if error is not None:
        if backend == "fla":
            raise RuntimeError(f"fla unavailable: {error}")
        _log_once("torch-nofla", f"Lightning Attention: PyTorch implementation on CUDA (fla does not import: {error})")
        return "torch"
    _log_once("fla", "Lightning Attention: fla simple_gla Triton kernels (CUDA device, fla imports)")
    return "fla"


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mode: Mode = "chunk",
    chunk_size: int = 64,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if mode == "naive":
        return naive_lightning_attention(q, k, v, g, scale, initial_state, output_final_state)
    if choose_backend(q.device, backend) == "fla":
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        op = chunk_simple_gla if mode == "chunk" else fused_recurrent_simple_gla
        state = None if initial_state is None else initial_state.float()
        return op(q, k, v, g_gamma=g.float(), scale=scale, initial_state=state, output_final_state=output_final_state)
    if mode == "chunk":
        return chunked_lightning_attention(q, k, v, g, scale, initial_state, output_final_state, chunk_size)
    return recurrent_lightning_attention(q, k, v, g, scale, initial_state, output_final_state)
