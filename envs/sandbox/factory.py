"""Builds sandboxes from the `sandbox:` spec section (kpop.spec.sandbox.SandboxSpec).

`backend_factory(spec)` returns a callable slot -> Sandbox, so a pool can make one warm sandbox
per slot; `limits_from_spec` converts the user-facing units (MiB, KiB) to `SandboxLimits`.
Backends are imported lazily: the Docker library is only needed by the Docker backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kpop.envs.sandbox.api import Sandbox, SandboxLimits

if TYPE_CHECKING:
    from kpop.spec.sandbox import SandboxLimitsSpec, SandboxSpec

MIB = 2**20


def limits_from_spec(spec: SandboxLimitsSpec) -> SandboxLimits:
    return SandboxLimits(
        wall_s=spec.wall_s, cpu_s=spec.cpu_s, memory_bytes=spec.memory_mib * MIB, max_processes=spec.max_processes,
        max_file_bytes=spec.max_file_mib * MIB, max_output_bytes=spec.max_output_kib * 1024,
        max_output_files_bytes=spec.max_output_files_mib * MIB,
    )


def backend_factory(spec: SandboxSpec) -> Callable[[int], Sandbox]:
    backend = spec.backend
    if backend.type == "bwrap":
        from kpop.envs.sandbox.bwrap import BwrapConfig, BwrapSandbox

        config = BwrapConfig(python=backend.python, ro_binds=tuple(backend.ro_binds), use_cgroups=backend.use_cgroups)
        if backend.warm:
            from kpop.envs.sandbox.bwrap_warm import WarmBwrapSandbox

            return lambda slot: WarmBwrapSandbox(config, slot)
        return lambda slot: BwrapSandbox(config, slot)
    if backend.type == "docker" and backend.warm:
        from kpop.envs.sandbox.docker_warm import WarmDockerSandbox

        return lambda slot: WarmDockerSandbox(image=backend.image, python=backend.python, base_url=backend.base_url)
    if backend.type == "docker":
        from kpop.envs.sandbox.docker_backend import DockerSandbox

        return lambda slot: DockerSandbox(image=backend.image, python=backend.python, base_url=backend.base_url)
    if backend.type == "process" and backend.unsafe:
        from kpop.envs.sandbox.unsafe_process import UnsafeProcessSandbox

        shared = UnsafeProcessSandbox()  # one instance: the warning is logged once per pool
        return lambda slot: shared
    raise ValueError(f"unknown or unacknowledged sandbox backend: {backend!r}")


def make_pool(spec: SandboxSpec):
    """A `SandboxPool` of `spec.pool_size` slots of the spec's backend, with the spec's limits as default."""
    from kpop.envs.sandbox.pool import SandboxPool

    return SandboxPool(backend_factory(spec), size=spec.pool_size, default_limits=limits_from_spec(spec.limits))
