"""The warm Docker backend (sandbox.backend.warm) against a real engine; skipped when none is reachable.

- The spec field is honoured: `warm: true` runs every execution of a pool slot in one running
  container (its hostname is the container's), through the pool a RunSpec configures; `warm: false`
  makes a new container per execution.
- The reset: what one execution leaves (files in /work and /tmp, a detached process, System V IPC
  objects, POSIX queue files) is gone when the next one runs in the same container.
- The limits hold as in the fresh-container backend (network, read-only root, memory, wall clock,
  processes, output), and the container serves the next execution after each.
"""

from __future__ import annotations

import os

import pytest

from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxStatus
from kpop.envs.sandbox.docker_warm import WarmDockerSandbox
from kpop.spec import load_spec
from tests.envs.sandbox.test_sandbox_docker import IMAGE, LIMITS, engine  # noqa: F401 (the engine fixture)

HOSTNAME = SandboxRequest(command=["cat", "/etc/hostname"], limits=LIMITS)


@pytest.fixture
async def warm(engine):  # noqa: F811 (the imported fixture)
    sandbox = WarmDockerSandbox(image=IMAGE)
    yield sandbox
    await sandbox.close()


@pytest.mark.parametrize("warm_field", [True, False])
async def test_the_run_spec_field_selects_warm_containers(engine, warm_field):  # noqa: F811
    from kpop.envs.sandbox.api import run_request
    from kpop.envs.sandbox.default import configure

    spec = load_spec(None, ["sandbox.backend.type=docker", f"sandbox.backend.warm={str(warm_field).lower()}",
                            "sandbox.pool_size=1", f"sandbox.backend.image={IMAGE}"])
    pool = configure(spec.sandbox)  # what every environment worker does with its RunSpec's section
    try:
        names = [(await run_request(HOSTNAME)).stdout.strip() for _ in range(3)]
    finally:
        configure(None)
        await pool.close()
    assert all(names)
    assert len(set(names)) == (1 if warm_field else 3), names


async def test_nothing_one_execution_leaves_is_visible_to_the_next(warm):
    leave = ("import os, subprocess\n"
             "open('/work/left.txt', 'w').write('x'); open('/tmp/left.txt', 'w').write('x')\n"
             "os.makedirs('/work/d/e'); os.chmod('/work/d', 0)\n"
             "open('/dev/mqueue/q', 'w').close()\n"
             "subprocess.run(['ipcmk', '-M', '4096'], check=True, stdout=subprocess.DEVNULL)\n"
             "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
             "print(open('/etc/hostname').read().strip())")
    first = await warm.run(SandboxRequest(code=leave, limits=LIMITS))
    assert first.ok, first
    look = ("import os\n"
            "procs = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "print(open('/etc/hostname').read().strip())\n"
            "print(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/mqueue')))\n"
            "print(len(open('/proc/sysvipc/shm').readlines()) - 1, procs[0], len(procs))")
    second = await warm.run(SandboxRequest(code=look, limits=LIMITS))
    assert second.ok, second
    host, listing, counts = second.stdout.splitlines()
    assert host == first.stdout.strip()                        # the same container
    assert listing == "['main.py'] [] []"                      # its own file only
    assert counts == "0 1 2"                                   # no IPC; the launcher (pid 1) and itself
    assert warm.containers_started == 1


async def test_limits_hold_and_the_container_serves_on(warm):
    code = ("import socket\ntry:\n    socket.getaddrinfo('example.com', 80); print('RESOLVED')\nexcept OSError: print('nodns')\n"
            "try:\n    open('/usr/x', 'w')\nexcept OSError: print('ro')\nimport os; print(os.getuid(), os.nice(0))")
    result = await warm.run(SandboxRequest(code=code, limits=LIMITS))
    assert result.ok and result.stdout.split() == ["nodns", "ro", "65534", str(os.nice(0))], result  # our niceness
    oom = await warm.run(SandboxRequest(code="x = []\nwhile True: x.append(bytearray(16 * 2**20))", limits=LIMITS))
    assert oom.status is SandboxStatus.OOM, oom
    slow = await warm.run(SandboxRequest(code="import time; time.sleep(60)", limits=SandboxLimits(wall_s=1.0)))
    assert slow.status is SandboxStatus.TIMEOUT and slow.wall_s < 4, slow
    bomb = await warm.run(SandboxRequest(code="import os\nfor _ in range(1000): os.fork()\n", limits=LIMITS))
    assert bomb.status is not SandboxStatus.OK or bomb.exit_code != 0, bomb
    flood = await warm.run(SandboxRequest(code="while True: print('x' * 4096)", limits=LIMITS))
    assert flood.status is SandboxStatus.OUTPUT_TRUNCATED and len(flood.stdout) <= LIMITS.max_output_bytes, flood
    spin = await warm.run(SandboxRequest(code="while True: pass", limits=SandboxLimits(cpu_s=1.0, wall_s=8.0)))
    assert spin.status is SandboxStatus.CPU_TIMEOUT, spin
    after = await warm.run(SandboxRequest(code="import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]))",
                                          limits=LIMITS))
    assert after.ok and after.stdout.strip() == "2", after
    missing = await warm.run(SandboxRequest(command=["no-such-program"], limits=LIMITS))
    assert missing.exit_code == 127 and "no-such-program" in missing.stderr, missing


def test_the_run_plan_says_which_docker_mode_runs():
    from kpop.launch import describe_sandbox

    lines = {w: describe_sandbox(load_spec(None, ["sandbox.backend.type=docker", f"sandbox.backend.warm={w}"]).sandbox)
             for w in ("true", "false")}
    assert "warm: one running container per slot" in lines["true"] and "a fresh container each" in lines["false"]
