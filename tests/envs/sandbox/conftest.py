"""Fixtures for the sandbox tests: a bubblewrap sandbox with small limits, skipped without bwrap.

`box` is each bwrap mode in turn: a fresh sandbox per execution (BwrapSandbox) and the warm slot
(WarmBwrapSandbox, the default), so every attack and behaviour test runs against both.
"""

from __future__ import annotations

import shutil

import pytest

from kpop.envs.sandbox.api import SandboxLimits
from kpop.envs.sandbox.bwrap import BwrapSandbox
from kpop.envs.sandbox.bwrap_warm import WarmBwrapSandbox

SMALL = SandboxLimits(wall_s=5.0, cpu_s=2.0, memory_bytes=128 * 2**20, max_processes=16,
                      max_file_bytes=2**20, max_output_bytes=64 * 1024)


@pytest.fixture(params=["fresh", "warm"])
async def box(request):
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed; deploy/setup.sh installs it")
    sandbox = (WarmBwrapSandbox if request.param == "warm" else BwrapSandbox)(slot=200)
    yield sandbox
    await sandbox.close()


@pytest.fixture
def small() -> SandboxLimits:
    return SMALL
