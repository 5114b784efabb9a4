"""kpop.faults.fault_point in a child process: it stops only where KPOP_FAULT_POINT matches, writes the
marker (name and pid) where it is told, and fires once per marker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kpop.faults import DIR_ENV, ENV, MARKER, read_marker

pytestmark = pytest.mark.faults


def reach(name: str, pattern: str, where: str | None, env_dir: str = "") -> subprocess.Popen:
    code = f"from kpop.faults import fault_point; fault_point({where!r}, {name!r}); print('passed')"
    env = {**os.environ, ENV: pattern, DIR_ENV: env_dir}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_marker(proc: subprocess.Popen, marker) -> None:
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no marker in 60 s"
        time.sleep(0.005)


@pytest.mark.parametrize("pattern", ["rollout:calc:3:12:0:turn_1_generated", "rollout:*:12:0:turn_1_generated"])
def test_a_matching_point_writes_its_marker_and_blocks_until_killed(tmp_path, pattern):
    proc = reach("rollout:calc:3:12:0:turn_1_generated", pattern, None, env_dir=str(tmp_path))
    wait_marker(proc, tmp_path / MARKER)
    reached = read_marker(tmp_path / MARKER)
    assert reached.name == "rollout:calc:3:12:0:turn_1_generated" and reached.pid == proc.pid
    assert proc.poll() is None
    proc.kill()
    proc.wait()
    # fired once: a process that reaches the same point while the marker is there goes on
    again = reach("rollout:calc:3:12:0:turn_1_generated", pattern, None, env_dir=str(tmp_path))
    assert again.communicate(timeout=60)[0].strip() == "passed"


@pytest.mark.parametrize("pattern", ["", "step_000002:linked", "rollout:*:13:0:turn_1_generated"])
def test_a_point_that_does_not_match_returns_at_once(tmp_path, pattern):
    proc = reach("rollout:calc:3:12:0:turn_1_generated", pattern, str(tmp_path))
    assert proc.communicate(timeout=60)[0].strip() == "passed"
    assert not (tmp_path / MARKER).exists()


def test_a_matching_point_without_a_directory_is_an_error(tmp_path):
    proc = reach("step_000002:linked", "step_000002:linked", None)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and f"{DIR_ENV} names no directory" in err
