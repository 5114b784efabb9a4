"""Weights on the wire: a state dict as safetensors chunks of bounded size, and back.

Contract:
- `state_dict_to_chunks(state_dict, max_chunk_bytes)` returns a list of safetensors-serialised
  byte strings. Every tensor appears in exactly one chunk, under its Hugging Face name; tensors
  are never split, so a single tensor larger than `max_chunk_bytes` gets a chunk of its own.
- `chunks_to_state_dict(chunks)` is the inverse (names unique across chunks, else an error).
- `read_chunk_header(chunk)` lists (name -> dtype, shape) of a chunk without deserialising the
  tensor data, so an update can be validated before any weight is touched.
- `validate_update(chunks, expected)` checks that the chunks name exactly the expected parameters
  with the expected shapes and floating dtypes; a wrong update raises `WeightSyncError` and
  leaves the caller free to keep serving its current weights.

Engines raise `WeightSyncError` for every failed update (bad names/shapes, timeout, worker error).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# safetensors dtype tags accepted for weights (converted to the serving dtype on load).
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


class WeightSyncError(RuntimeError):
    """A weight update was rejected or could not complete; the previous weights stay in use."""


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # safetensors tag, e.g. "F32"
    shape: tuple[int, ...]


def state_dict_to_chunks(state_dict: Mapping[str, torch.Tensor], max_chunk_bytes: int) -> list[bytes]:
    """Serialise `state_dict` into safetensors byte strings of at most ~`max_chunk_bytes` each."""
    from safetensors.torch import save

    if max_chunk_bytes <= 0:
        raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
    chunks: list[bytes] = []
    group: dict = {}
    group_ptrs: set[int] = set()
    group_bytes = 0
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        if group and group_bytes + size > max_chunk_bytes:
            chunks.append(save(group))
            group, group_ptrs, group_bytes = {}, set(), 0
        ptr = t.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing storage (tied weights) within one file.
        group[name] = t.clone() if ptr in group_ptrs else t
        group_ptrs.add(ptr)
        group_bytes += size
    if group:
        chunks.append(save(group))
    return chunks


def chunks_to_state_dict(chunks: Iterable[bytes]) -> dict:
    """Deserialise chunks back into one {name: tensor} dict; duplicate names are an error."""
    from safetensors.torch import load

    out: dict = {}
    for i, chunk in enumerate(chunks):
        for name, tensor in load(chunk).items():
            if name in out:
                raise WeightSyncError(f"parameter {name!r} appears in more than one chunk (again in chunk {i})")
            out[name] = tensor
    return out


def read_chunk_header(chunk: bytes) -> dict[str, TensorSpec]:
    """Names, dtypes and shapes of the tensors in a safetensors byte string (data not read)."""
    if len(chunk) < 8:
        raise WeightSyncError(f"chunk of {len(chunk)} bytes is not a safetensors buffer")
    (header_len,) = struct.unpack("<Q", chunk[:8])
    if header_len > len(chunk) - 8:
        raise WeightSyncError(f"chunk header claims {header_len} bytes but the chunk has {len(chunk)}")
    try:
        header = json.loads(chunk[8 : 8 + header_len])
    except ValueError as exc:
        raise WeightSyncError(f"chunk header is not valid safetensors JSON: {exc}") from exc
    return {
        name: TensorSpec(dtype=info["dtype"], shape=tuple(info["shape"]))
        for name, info in header.items()
        if name != "__metadata__"
    }


def expected_params_from_dir(model_dir: str | Path) -> dict[str, TensorSpec]:
    """The parameter set of a Hugging Face folder, read from its *.safetensors headers."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    expected: dict[str, TensorSpec] = {}
    for f in files:
        with open(f, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            expected.update(read_chunk_header(struct.pack("<Q", header_len) + fh.read(header_len)))
    return expected


def validate_update(chunks: list[bytes], expected: Mapping[str, TensorSpec]) -> dict[str, TensorSpec]:
    """Check that `chunks` hold exactly the `expected` parameters, with their shapes; return the specs."""
    if not chunks:
        raise WeightSyncError("weight update has no chunks")
    seen: dict[str, TensorSpec] = {}
    for i, chunk in enumerate(chunks):
        for name, spec in read_chunk_header(chunk).items():
            if name in seen:
                raise WeightSyncError(f"parameter {name!r} appears in more than one chunk (again in chunk {i})")
            seen[name] = spec
    unknown = sorted(set(seen) - set(expected))
    missing = sorted(set(expected) - set(seen))
    if unknown or missing:
        raise WeightSyncError(
            f"weight update names do not match the model: unknown {unknown[:5]}"
            f"{'...' if len(unknown) > 5 else ''} ({len(unknown)}), missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''} ({len(missing)}); names must be the Hugging Face "
            "names of the model's safetensors file, and an update must carry every parameter"
        )
    for name, spec in seen.items():
        want = expected[name]
        if spec.shape != want.shape:
            raise WeightSyncError(f"parameter {name!r} has shape {list(spec.shape)}, the model expects {list(want.shape)}")
        if spec.dtype not in FLOAT_DTYPES:
            raise WeightSyncError(f"parameter {name!r} has dtype {spec.dtype}; weights must be floating point")
    return seen
