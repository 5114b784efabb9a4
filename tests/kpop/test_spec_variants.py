"""Switching a `type`-tagged variant (`tagged_union`) of the RunSpec, by `--set PATH.type=NAME` or in
the YAML file: NAME's own defaults fill every field the user left out, and a field the user set that
NAME lacks is a problem naming its path, the chosen type and the fix.

The generic tests walk RunSpec's fields, so a new tagged union (also one inside a list, like
envs[].rewards[]) is covered without a line here; the concrete tests pin values a reader can check.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from kpop.spec import RunSpec, SpecError, load_spec
from kpop.spec.base import models_in, variant_tag
from kpop.spec.envs import EnvEntrySpec, RepetitionTermSpec
from kpop.spec.learner import IcePopSpec, LPOSpec
from kpop.spec.sandbox import ProcessBackendSpec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.yaml"

# The least settings a model needs to validate (required fields, opt-ins its validators demand).
NEEDS: dict[type[BaseModel], dict[str, Any]] = {
    EnvEntrySpec: {"name": "calculator"},
    ProcessBackendSpec: {"unsafe": True},
}


# A step of the walk to a union: the field's name, whether it is a list (entry 0 is used) and the
# model that holds the next step (None on the last step, the union itself).
Step = tuple[str, bool, type[BaseModel] | None]


@dataclass(frozen=True)
class TaggedUnion:
    steps: tuple[Step, ...]
    variants: tuple[type[BaseModel], ...]

    @property
    def dotted(self) -> str:
        return ".".join(name + (".0" if in_list else "") for name, in_list, _ in self.steps)

    def yaml(self, leaf: dict[str, Any] | None) -> str:
        """A spec file whose data at the union is `leaf` (None: left out, unless a list entry must
        exist to hold it), creating the list entries and picking the enclosing variants on the way."""
        node: Any = leaf
        for k in reversed(range(len(self.steps))):
            name, in_list, _ = self.steps[k]
            parent = _settings(self.steps[k - 1][2]) if k else {}
            if in_list:
                node = {**parent, name: [node if node is not None else {}]}
            elif node is not None:
                node = {**parent, name: node}
            else:
                node = parent or None
        return yaml.safe_dump(node or {})


def _settings(model: type[BaseModel] | None) -> dict[str, Any]:
    """What the data of an enclosing model must hold: its needs, and its `type` when it has one."""
    if model is None:
        return {}
    return {**({"type": variant_tag(model)} if "type" in model.model_fields else {}), **NEEDS.get(model, {})}


def _unions(model: type[BaseModel] = RunSpec, steps: tuple[Step, ...] = ()) -> Iterator[TaggedUnion]:
    for name, field in model.model_fields.items():
        in_list = typing.get_origin(field.annotation) is list
        members = models_in(field.annotation)
        if members and all("type" in m.model_fields for m in members):
            yield TaggedUnion(steps + ((name, in_list, None),), tuple(members))
        for member in members:
            yield from _unions(member, steps + ((name, in_list, member),))


def _at(spec: RunSpec, union: TaggedUnion) -> BaseModel:
    node: Any = spec
    for name, in_list, _ in union.steps:
        node = getattr(node, name)
        node = node[0] if in_list else node
    return node


def _default_json(model: type[BaseModel], field: str) -> Any:
    return to_jsonable_python(model.model_fields[field].get_default(call_default_factory=True))


def _expected(variant: type[BaseModel]) -> BaseModel:
    try:
        return variant(**NEEDS.get(variant, {}))
    except ValueError as exc:
        raise AssertionError(f"{variant.__name__} does not validate from its defaults: add what it needs to NEEDS") from exc


UNIONS = list(_unions())
SWITCHES = [(u, v) for u in UNIONS for v in u.variants]
# (union, target, source, field): a field of `source` that `target` lacks, one per variant pair.
STRAYS = [(u, target, source, min(set(source.model_fields) - set(target.model_fields)))
          for u in UNIONS for target in u.variants for source in u.variants
          if set(source.model_fields) - set(target.model_fields)]


def _switch_id(case: Any) -> str:
    return case.dotted if isinstance(case, TaggedUnion) else getattr(case, "__name__", str(case))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def problems(path: Path | None, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, list(overrides))
    return [str(p) for p in info.value.problems]


def test_the_walk_finds_every_tagged_union_of_the_spec():
    found = {u.dotted for u in UNIONS}
    assert {"model", "rollout.engine", "envs.0.rewards.0", "scheduler", "learner.objective",
            "learner.off_policy", "sandbox.backend"} <= found
    assert all(len({variant_tag(v) for v in u.variants}) == len(u.variants) for u in UNIONS)


@pytest.mark.parametrize(("union", "variant"), SWITCHES, ids=_switch_id)
def test_set_type_gives_the_variants_own_defaults(tmp_path, union, variant):
    # The variant's needs are set before the switch: a field set on the default variant that the
    # new variant has is kept.
    needs = [f"{union.dotted}.{k}={json.dumps(v)}" for k, v in NEEDS.get(variant, {}).items()]
    spec = load_spec(write(tmp_path, union.yaml(None)), [*needs, f"{union.dotted}.type={variant_tag(variant)}"])
    assert _at(spec, union) == _expected(variant)


@pytest.mark.parametrize(("union", "variant"), SWITCHES, ids=_switch_id)
def test_yaml_type_gives_the_variants_own_defaults(tmp_path, union, variant):
    spec = load_spec(write(tmp_path, union.yaml({"type": variant_tag(variant), **NEEDS.get(variant, {})})))
    assert _at(spec, union) == _expected(variant)


@pytest.mark.parametrize(("union", "target", "source", "field"), STRAYS, ids=_switch_id)
def test_a_set_field_the_new_variant_lacks_is_an_error_naming_it(tmp_path, union, target, source, field):
    value, needs = _default_json(source, field), NEEDS.get(target, {})
    leaf = {"type": variant_tag(source), field: value}
    set_type = f"{union.dotted}.type={variant_tag(target)}"
    set_needs = [f"{union.dotted}.{k}={json.dumps(v)}" for k, v in needs.items()]
    cases = {
        "set in the YAML, type switched by --set": (union.yaml({**leaf, **needs}), [set_type]),
        "set by --set, type switched by --set": (union.yaml(None), [f"{union.dotted}.type={variant_tag(source)}",
                                                                    f"{union.dotted}.{field}={json.dumps(value)}", *set_needs, set_type]),
        "set in the YAML next to its type": (union.yaml({**leaf, **needs, "type": variant_tag(target)}), []),
    }
    for how, (text, overrides) in cases.items():
        msgs = problems(write(tmp_path, text), overrides)
        assert len(msgs) == 1, (how, msgs)
        assert msgs[0].startswith(f"{union.dotted}.{field}: "), (how, msgs)
        assert f"not of type {variant_tag(target)!r}" in msgs[0] and "remove it" in msgs[0], (how, msgs)


def test_set_lpo_and_gspo_take_their_own_clip_range():
    assert load_spec(QUICKSTART, ["learner.objective.type=lpo"]).learner.objective.clip_eps == pytest.approx(0.03)
    assert load_spec(QUICKSTART, ["learner.objective.type=gspo"]).learner.objective.clip_eps == pytest.approx(4e-4)
    assert load_spec(QUICKSTART).learner.objective.clip_eps == pytest.approx(0.2)


def test_set_switches_model_off_policy_sandbox_and_scheduler():
    spec = load_spec(QUICKSTART, ["model.type=hybrid", "learner.off_policy.type=icepop",
                                  "sandbox.backend.type=docker", "scheduler.type=kpop"])
    assert spec.model.type == "hybrid" and spec.model.preset == "tiny" and spec.model.hidden_size is None
    assert spec.learner.off_policy == IcePopSpec() and spec.learner.off_policy.alpha == 0.5
    assert spec.sandbox.backend.image == "kpop-sandbox:bookworm"
    assert spec.scheduler.type == "kpop" and spec.scheduler.max_staleness == 2
    assert load_spec(QUICKSTART, ["learner.off_policy.type=tis"]).learner.off_policy.cap == 2.0


def test_set_switches_a_reward_term_inside_the_envs_list(tmp_path):
    path = write(tmp_path, "envs:\n  - name: calculator\n    rewards:\n      - type: format\n")
    [term] = load_spec(path, ["envs.0.rewards.0.type=repetition"]).envs[0].rewards
    assert term == RepetitionTermSpec() and term.weight == 0.5 and term.threshold == 4.0


def test_a_field_both_variants_have_keeps_the_users_value(tmp_path):
    path = write(tmp_path, "learner:\n  objective:\n    clip_eps: 0.1\n")
    assert load_spec(path, ["learner.objective.type=lpo"]).learner.objective == LPOSpec(clip_eps=0.1)


def test_tuning_the_default_variant_without_naming_its_type_still_works():
    spec = load_spec(QUICKSTART, ["learner.off_policy.phi=1.5", "learner.objective.clip_eps=0.3", "model.hidden_size=64"])
    assert spec.learner.off_policy.type == "kpop" and spec.learner.off_policy.phi == 1.5 and spec.learner.off_policy.cap == 5.0
    assert spec.learner.objective.type == "grpo" and spec.learner.objective.clip_eps == 0.3
    assert spec.model.type == "llama" and spec.model.hidden_size == 64 and spec.model.num_kv_heads == 2


def test_the_error_names_the_path_the_chosen_type_and_the_fix():
    [msg] = problems(QUICKSTART, ["learner.off_policy.phi=1", "learner.off_policy.type=icepop"])
    assert msg == ("learner.off_policy.phi: 'phi' is a field of type 'kpop', not of type 'icepop' chosen here: "
                   "remove it, or set learner.off_policy.type to 'kpop' (type 'icepop' accepts: alpha, beta, type)")


def test_a_misspelt_key_of_a_switched_variant_suggests_its_own_fields():
    [msg] = problems(None, ["learner.objective.type=lpo", "learner.objective.punctuatoin=."])
    assert msg.startswith("learner.objective.punctuatoin: unknown key 'punctuatoin'; did you mean 'punctuation'?")
    assert "allowed for type 'lpo':" in msg


def test_a_stray_field_in_a_list_entry_is_judged_against_that_entrys_type(tmp_path):
    path = write(tmp_path, "envs:\n  - name: calculator\n    rewards:\n      - {type: repetition, penalty: 0.3}\n")
    [msg] = problems(path)
    assert msg.startswith("envs.0.rewards.0.penalty: 'penalty' is a field of type 'format', not of type 'repetition'")


def test_set_inside_a_default_list_of_a_variant_starts_from_that_variants_default(tmp_path):
    path = write(tmp_path, "envs:\n  - name: calculator\n    rewards:\n      - type: format\n")
    [term] = load_spec(path, ["envs.0.rewards.0.forbidden_tags.0=answer"]).envs[0].rewards
    assert term.forbidden_tags == ["answer"]


def test_the_engine_variants_accept_their_types_and_reject_others():
    assert load_spec(None, ["rollout.engine.type=vllm"]).rollout.engine.kv_cache_gib == 0.25
    builtin = load_spec(None, ["rollout.engine.type=builtin", "rollout.engine.max_num_seqs=8"]).rollout.engine
    assert (builtin.type, builtin.max_num_seqs) == ("builtin", 8)
    [msg] = problems(None, ["rollout.engine.type=builtin", "rollout.engine.kv_cache_gib=1"])
    assert msg.startswith("rollout.engine.kv_cache_gib:") and "builtin" in msg
    assert load_spec(None, ["rollout.engine.type=auto"]).rollout.engine.kv_cache_gib == 0.25
    [msg] = problems(None, ["rollout.engine.type=sglang"])
    assert msg.startswith("rollout.engine:") and "'vllm'" in msg and "'builtin'" in msg and "'auto'" in msg
