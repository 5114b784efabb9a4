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


def test_plugin_options_change_the_tasks(installed_plugin):
    words = {registry.make_env(installed_plugin, {"num_words": 2}).reset_task(s).messages[0].content.split()[-1] for s in range(40)}
    assert words == {"apple", "river"}
    assert len({registry.make_env(installed_plugin).reset_task(s).messages[0].content for s in range(40)}) > 2
    hidden = registry.make_env(installed_plugin, {"hidden": True})
    task = hidden.reset_task(3)
    assert hidden.word not in task.messages[0].content and task.tools[0]["function"]["name"] == "read_slot"
    with pytest.raises(ValueError, match="num_words"):
        registry.make_env(installed_plugin, {"num_words": 0})


async def test_hidden_word_is_read_with_the_tool(installed_plugin):
    from kpop.envs.contract import Action, ToolCall

    env = registry.make_env(installed_plugin, {"hidden": True})
    env.reset_task(5)
    wrong = await env.astep(Action("", [ToolCall("read_slot", {"slot": "one"}, "c0")]))
    assert not wrong.terminated and wrong.observations[0].content.startswith("error:")
    read = await env.astep(Action("", [ToolCall("read_slot", {"slot": env.slot}, "c1")]))
    assert [m.content for m in read.observations] == [env.word] and not read.terminated
    answer = await env.astep(Action(env.word))
    assert answer.terminated and answer.reward == 1.0 and answer.info.reward_parts == {"correct": 1.0, "used_tool": 1.0}


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
async def test_reference_reads_the_slot_on_the_configured_share_and_always_answers_right(installed_plugin, rate):
    outs = [await run_episode(registry.make_env(installed_plugin, {"hidden": True, "reference_tool_rate": rate}), s, reference_policy)
            for s in range(200)]
    assert {o.reward for o in outs} == {1.0}
    used = [o.reward_parts["used_tool"] for o in outs]
    assert [o.turns for o in outs] == [2 if u else 1 for u in used]
    assert sum(used) / len(used) == pytest.approx(rate, abs=0.07)


def test_plugin_passes_the_conformance_suite_when_hidden(installed_plugin):
    from kpop.envs.conformance import run_conformance

    assert [r for r in run_conformance(installed_plugin, seeds=2, options={"hidden": True, "reference_tool_rate": 0.5}) if not r.passed] == []
