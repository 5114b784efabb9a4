"""Functional behaviour of the sandbox API, the pool, the spec section, the CLI and the unsafe backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

import pytest
from pydantic import ValidationError

from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxStatus
from kpop.envs.sandbox.factory import limits_from_spec, make_pool
from kpop.envs.sandbox.pool import SandboxPool
from kpop.spec.sandbox import SandboxSpec


async def test_files_stdin_outputs_and_imports(box, small):
    request = SandboxRequest(
        code="import helper, sys\nopen('out/r.txt', 'w').write(helper.twice(sys.stdin.read()))\nprint('done')\n",
        files={"helper.py": "def twice(s):\n    return s * 2\n", "out/.keep": b""}, stdin="ab", outputs=("out/*.txt",), limits=small,
    )
    result = await box.run(request)
    assert result.ok and result.stdout == "done\n" and result.output_files == {"out/r.txt": b"abab"}


async def test_failing_code_is_ok_status_with_exit_code(box, small):
    result = await box.run(SandboxRequest(command=["python3", "-c", "raise SystemExit(3)"], limits=small))
    assert result.status is SandboxStatus.OK and result.exit_code == 3 and not result.ok


async def test_missing_command_is_ok_with_exit_127(box, small):
    result = await box.run(SandboxRequest(command=["no-such-binary-xyz"], limits=small))
    assert result.exit_code not in (0, None) and "no-such-binary-xyz" in result.stderr


def test_request_validation():
    with pytest.raises(ValueError):
        SandboxRequest()
    with pytest.raises(ValueError):
        SandboxRequest(command="ls -l")
    with pytest.raises(ValueError):
        SandboxLimits(wall_s=0)


async def test_pool_caps_concurrency_and_reports_queueing(small):
    spec = SandboxSpec.model_validate({"pool_size": 2})
    pool = make_pool(spec)
    try:
        requests = [SandboxRequest(code="import time; time.sleep(0.3); print('x')", limits=small) for _ in range(6)]
        results = await asyncio.gather(*(pool.run(r) for r in requests))
        stats = pool.stats()
    finally:
        await pool.close()
    assert all(r.ok for r in results)
    assert stats.runs == 6 and stats.queued_runs >= 4 and stats.max_wait_ms >= 250 and stats.busy == 0
    assert pool._live == 0  # closed pool released its slots


async def test_pool_applies_default_limits():
    spec = SandboxSpec.model_validate({"limits": {"wall_s": 0.5}, "pool_size": 1})
    pool = make_pool(spec)
    try:
        result = await pool.run(SandboxRequest(code="import time; time.sleep(5)"))
    finally:
        await pool.close()
    assert result.status is SandboxStatus.TIMEOUT and result.wall_s < 2


async def test_pool_replaces_unreusable_sandbox():
    made = []

    class Fake:
        name, reusable = "fake", True

        async def run(self, request):
            self.reusable = False
            return "ran"

        async def close(self):
            made.append(("closed", self.serial))

    serials = iter(range(100))

    def make(slot):
        fake = Fake()
        fake.serial = next(serials)
        return fake

    pool = SandboxPool(make, size=1)
    assert await pool.run(SandboxRequest(command=["x"])) == "ran"
    assert await pool.run(SandboxRequest(command=["x"])) == "ran"
    assert len(made) == 2 and made[0][1] != made[1][1]  # each used sandbox was retired, not reused


def test_spec_defaults_and_unsafe_guard():
    spec = SandboxSpec()
    assert spec.backend.type == "bwrap" and limits_from_spec(spec.limits) == SandboxLimits()
    with pytest.raises(ValidationError, match="unsafe: true"):
        SandboxSpec.model_validate({"backend": {"type": "process"}})
    assert SandboxSpec.model_validate({"backend": {"type": "process", "unsafe": True}}).backend.unsafe
    with pytest.raises(ValidationError):
        SandboxSpec.model_validate({"limits": {"memory_mb": 10}})  # unknown key
    from kpop.spec.schema import RunSpec

    assert RunSpec.model_fields["sandbox"].default_factory().backend.type == "bwrap"


async def test_unsafe_backend_warns_and_runs(caplog, small):
    with caplog.at_level(logging.WARNING):
        pool = make_pool(SandboxSpec.model_validate({"backend": {"type": "process", "unsafe": True}}))
    try:
        result = await pool.run(SandboxRequest(code="print(6 * 7)", limits=small))
        timeout = await pool.run(SandboxRequest(code="import time; time.sleep(9)", limits=SandboxLimits(wall_s=0.5)))
    finally:
        await pool.close()
    assert "UNSAFE" in caplog.text
    assert result.ok and result.stdout == "42\n" and timeout.status is SandboxStatus.TIMEOUT


def test_cli_sandbox_run_prints_json(capsys):
    from kpop.cli import sandbox_cmd

    parser = argparse.ArgumentParser()
    sandbox_cmd.add_arguments(parser)
    args = parser.parse_args(["run", "--wall-s", "3", "--max-output-kib", "4", "--", "python3", "-c", "print('hi')"])
    code = sandbox_cmd.run(args)
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ok" and out["stdout"] == "hi\n" and out["backend"] == "bwrap"
    args = parser.parse_args(["run", "--wall-s", "0.5", "--", "sleep", "5"])
    assert sandbox_cmd.run(args) == 1 and json.loads(capsys.readouterr().out)["status"] == "timeout"
