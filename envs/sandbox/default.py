"""The process-wide default pool used by `run_python` / `run_command`.

It is built from the `sandbox:` spec given to `configure` (a RunSpec does that at start-up) or,
if nothing was configured, from the default `SandboxSpec` (4 warm bubblewrap slots).
`configure` replaces the pool; the old one is closed in the background once idle.
"""

from __future__ import annotations

import asyncio

from kpop.envs.sandbox.pool import SandboxPool

_pool: SandboxPool | None = None


def configure(spec) -> SandboxPool:
    """Make the default pool from a `kpop.spec.sandbox.SandboxSpec` (or a dict of one)."""
    global _pool
    from kpop.envs.sandbox.factory import make_pool
    from kpop.spec.sandbox import SandboxSpec

    old, _pool = _pool, make_pool(spec if isinstance(spec, SandboxSpec) else SandboxSpec.model_validate(spec or {}))
    if old is not None:
        try:
            asyncio.get_running_loop().create_task(old.close())
        except RuntimeError:
            pass
    return _pool


def default_pool() -> SandboxPool:
    return _pool if _pool is not None else configure(None)
