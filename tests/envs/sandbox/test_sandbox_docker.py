"""The Docker backend against a real engine; skipped with the reason when none is reachable."""

from __future__ import annotations

import os

import pytest

from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxStatus
from kpop.envs.sandbox.docker_backend import DockerSandbox

IMAGE = os.environ.get("KPOP_SANDBOX_IMAGE", "kpop-sandbox:bookworm")
LIMITS = SandboxLimits(wall_s=8.0, cpu_s=2.0, memory_bytes=128 * 2**20, max_processes=16, max_output_bytes=64 * 1024)


@pytest.fixture(scope="module")
def engine():
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:  # noqa: BLE001 (any failure: no usable engine)
        pytest.skip(f"no Docker engine reachable ({type(exc).__name__}); run `bash deploy/docker_engine.sh` as root")
    try:
        client.images.get(IMAGE)
    except Exception:  # noqa: BLE001
        pytest.skip(f"image {IMAGE} missing; `bash deploy/docker_engine.sh` builds it")
    client.close()


@pytest.fixture
async def dbox(engine):
    sandbox = DockerSandbox(image=IMAGE)
    yield sandbox
    await sandbox.close()


async def test_docker_runs_code_with_files_and_stdin(dbox):
    request = SandboxRequest(code="import sys, os\nprint(sys.stdin.read(), open('in.txt').read(), os.getuid())\nopen('o.txt','w').write('z')",
                             files={"in.txt": "data"}, stdin="hello", outputs=("o.txt",), limits=LIMITS)
    result = await dbox.run(request)
    assert result.ok, result
    assert result.stdout.split() == ["hello", "data", "65534"] and result.output_files == {"o.txt": b"z"}


async def test_docker_contains_network_writes_and_limits(dbox):
    code = ("import socket\ntry:\n    socket.getaddrinfo('example.com', 80); print('RESOLVED')\nexcept OSError: print('nodns')\n"
            "try:\n    open('/usr/x', 'w')\nexcept OSError: print('ro')\n")
    result = await dbox.run(SandboxRequest(code=code, limits=LIMITS))
    assert result.ok and result.stdout.split() == ["nodns", "ro"], result
    oom = await dbox.run(SandboxRequest(code="x = []\nwhile True: x.append(bytearray(16 * 2**20))", limits=LIMITS))
    assert oom.status is SandboxStatus.OOM, oom
    slow = await dbox.run(SandboxRequest(code="import time; time.sleep(60)", limits=SandboxLimits(wall_s=1.0)))
    assert slow.status is SandboxStatus.TIMEOUT and slow.wall_s < 4, slow
    bomb = await dbox.run(SandboxRequest(code="import os\nfor _ in range(1000): os.fork()\n", limits=LIMITS))
    assert bomb.status is not SandboxStatus.OK or bomb.exit_code != 0, bomb
