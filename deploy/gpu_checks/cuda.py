"""GPU preflight: torch sees a CUDA device, and the GPU extras import (vllm, fla, triton, deepspeed).

    python deploy/gpu_checks/cuda.py

Prints one JSON line {"ok", "message", "device", "capability", "versions"}; exit status 1 when
there is no CUDA device or a package of the `gpu` extra does not import (the other GPU checks
are then skipped).
"""

from __future__ import annotations

import importlib
import json
import sys


def main() -> int:
    import torch

    versions, missing = {"torch": torch.__version__, "cuda": torch.version.cuda}, []
    for name in ("vllm", "fla", "triton", "deepspeed"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 (any import failure is the finding)
            missing.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    ok = torch.cuda.is_available() and not missing
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    message = f"{device or 'no CUDA device'}; " + (f"missing: {'; '.join(missing)}" if missing else "gpu extras import")
    print(json.dumps({"ok": ok, "message": message, "device": device, "versions": versions,
                      "capability": list(torch.cuda.get_device_capability(0)) if device else None}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
