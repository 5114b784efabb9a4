"""The example plugin package is pip-installed, discovered through its `kpop.envs` entry point,
credited to its distribution, passes the conformance suite and plays an episode."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kpop.envs import registry
from kpop.envs.solver import reference_policy, run_episode

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin_env"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site"
    shutil.copytree(EXAMPLE, source)  # build in a copy: pip leaves build/ and egg-info behind
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source)]
    subprocess.run(cmd, check=True, timeout=240, capture_output=True)
    sys.path.insert(0, str(target))
    registry.rescan()
    yield "echo"
    sys.path.remove(str(target))
    registry._REGISTRY.pop("echo", None)
    for name in [m for m in sys.modules if m.startswith("kpop_plugin_echo")]:
        del sys.modules[name]


def test_plugin_is_listed_with_its_distribution(installed_plugin):
    records = {r.name: r for r in registry.list_envs()}
    assert records[installed_plugin].source == "kpop-plugin-echo"
    assert records[installed_plugin].cls.__module__ == "kpop_plugin_echo"
    assert registry.plugin_errors() == {}


async def test_plugin_plays_an_episode(installed_plugin):
    env = registry.make_env(installed_plugin)
    outcome = await run_episode(env, 4, reference_policy)
    assert outcome.terminated and outcome.reward == 1.0
    wrong = await run_episode(env, 4, lambda *_: _const("not the word"))
    assert wrong.reward == 0.0


async def _const(text: str) -> str:
    return text


def test_plugin_passes_the_conformance_suite(installed_plugin):
    from kpop.envs.conformance import run_conformance

    assert [r for r in run_conformance(installed_plugin, seeds=2) if not r.passed] == []
