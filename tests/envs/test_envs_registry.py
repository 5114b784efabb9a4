"""Registry: names are unique, options are validated, broken plugins are reported, not raised."""

from __future__ import annotations

from importlib import metadata

import pytest

from kpop.envs import registry
from kpop.envs.families.search.env import SearchEnv


def test_unknown_name_suggests_a_close_one():
    with pytest.raises(KeyError, match="did you mean 'search'"):
        registry.get_env("serch")


def test_a_taken_name_cannot_be_reused_by_another_class():
    class Other(SearchEnv):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register_env("search")(Other)


def test_options_are_checked_against_the_env_model():
    assert registry.make_env("search", {"metric": "em"}).metric == "em"
    with pytest.raises(ValueError, match="metric"):
        registry.make_env("search", {"metric": "bleu"})
    with pytest.raises(ValueError, match="max_turns"):
        registry.make_env("workflow", {"max_turns": 0})


def test_broken_entry_point_is_recorded_not_raised():
    ep = metadata.EntryPoint(name="broken-plugin", value="kpop_no_such_module_xyz:Env", group=registry.ENTRY_POINT_GROUP)
    registry._load_entry_point(ep)
    try:
        errors = registry._PLUGIN_ERRORS
        assert any(key.startswith("broken-plugin") and "ModuleNotFoundError" in msg for key, msg in errors.items())
        assert "broken-plugin" not in {r.name for r in registry.list_envs()}
    finally:
        registry._PLUGIN_ERRORS.clear()
