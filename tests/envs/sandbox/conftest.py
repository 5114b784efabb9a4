"""Fixtures for the sandbox tests: a bubblewrap sandbox with small limits, skipped without bwrap."""

from __future__ import annotations

import shutil

import pytest

from kpop.envs.sandbox.api import SandboxLimits
from kpop.envs.sandbox.bwrap import BwrapSandbox

SMALL = SandboxLimits(wall_s=5.0, cpu_s=2.0, memory_bytes=128 * 2**20, max_processes=16,
                      max_file_bytes=2**20, max_output_bytes=64 * 1024)


@pytest.fixture
async def box():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed; deploy/setup.sh installs it")
    sandbox = BwrapSandbox(slot=200)
    yield sandbox
    await sandbox.close()


@pytest.fixture
def small() -> SandboxLimits:
    return SMALL
