"""Every leaf field of the RunSpec takes effect, or is refused.

The walk visits every leaf of RunSpec (inside every variant of every tagged union, and inside list
entries such as envs[].rewards[]) and every switch of a union's `type`. For each it changes that one
value from a spec that validates to another valid value, then:

- the runtime configuration `kpop run`, `kpop eval` and `kpop serve` build their processes from
  (kpop.runtime.runtime_config) changes, and the field is read by name outside kpop/spec (some
  sections travel whole, e.g. `sandbox:` into each worker: a field of theirs must be read there); or
- the field is one of the few read by name where the runtime configuration does not reach
  (CONSUMED_ELSEWHERE: the learner, the loops and the scheduler, the model builder), each listed with
  the sources that must read it and the test that proves its effect; or
- the spec refuses any change (REFUSED: settings no loop runs yet, with a message that says so).
The learner.distill / learner.preference sections are walked with their rounds on (NEEDS: every 1),
since without rounds the spec refuses any change of their settings (tests/kpop/test_stages.py).

A field with no other valid value is listed in FIXED. A new field that nothing consumes fails here.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import itertools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

import pytest
from pydantic import BaseModel

from kpop.runtime import runtime_config
from kpop.spec import RunSpec, SpecError, validate_spec
from kpop.spec.base import models_in, variant_tag
from kpop.spec.envs import EnvEntrySpec
from kpop.spec.learner import DistillSpec, PreferenceSpec
from kpop.spec.sandbox import ProcessBackendSpec

REPO = Path(__file__).resolve().parents[2]
CODE = ("kpop", "envs", "rollout", "learner", "quant", "models", "deploy")  # where a field can be read
MODEL_DIR = "/models/start"  # the runtime configuration only names the folder
NEEDS: dict[type[BaseModel], dict[str, Any]] = {EnvEntrySpec: {"name": "calculator"}, ProcessBackendSpec: {"unsafe": True},
                                                DistillSpec: {"every": 1}, PreferenceSpec: {"every": 1}}
# Fields valid only next to another field of their section: that data joins their base.
CONTEXT: dict[str, tuple[tuple, dict[str, Any]]] = {"cluster.placement.": (("cluster",), {"address": "auto"}),
                                                    "cluster.start_timeout_s": (("cluster",), {"address": "auto"})}
# Fields whose values name other parts of the spec, so no generic candidate validates: the value to try.
VALUES: dict[str, Any] = {"sft.anneal.env_options": {"calculator": {"reference_tool_rate": 0.3}}}


@dataclass(frozen=True)
class Consumer:
    sources: tuple[str, ...]  # files or folders (from the repository root) that read the field by name
    proof: str                # "tests/...py::test_name": the test showing the field's effect


# Fields that do not change how a process is built but are read where the RunSpec section goes whole.
# The longest matching prefix wins.
CONSUMED_ELSEWHERE: dict[str, Consumer] = {
    # The starting model and tokenizer (kpop.bootstrap), built before any runtime configuration.
    "model[llama].": Consumer(("kpop/bootstrap.py", "models/tiny_llama.py"),
                              "tests/models/test_models_tiny_llama.py::test_init_std_sets_the_weight_scale"),
    # A hybrid checkpoint is used from model.path; a fresh one is built from the preset and its
    # overrides (models/hybrid/fresh.py through presets.config_from_spec).
    "model[hybrid].": Consumer(("kpop/bootstrap.py", "kpop/spec/resolve.py", "models/hybrid/presets.py"),
                               "tests/models/test_models_hybrid_fresh.py::test_a_fresh_hybrid_takes_the_preset_the_overrides_and_the_tokenizer"),
    # "auto" picks vLLM for the walk's default model (a fresh Llama, head size 32), as "vllm" does;
    # for a hybrid model or another head size it picks the built-in engine.
    "rollout.engine[auto].type": Consumer(("kpop/runtime/build.py",),
                                          "tests/kpop/test_runtime_config.py::test_the_engine_type_picks_the_engine_config_and_auto_follows_the_serving_rule"),
    "tokenizer.": Consumer(("kpop/bootstrap.py",), "tests/kpop/test_runtime_coverage.py::test_bootstrap_reads_the_model_and_tokenizer_sections"),
    # Task sampling and the loops' shape of a step.
    "envs.0.weight": Consumer(("kpop/tasks.py",), "tests/kpop/test_scheduler_units.py::test_sampler_with_curriculum_is_deterministic_and_resumable"),
    "rollout.group_size": Consumer(("kpop/loop",), "tests/kpop/test_e2e_sync_run.py::test_metrics_record_every_phase_and_weights_reach_the_engine"),
    "sft.": Consumer(("kpop/loop", "kpop/launch.py"), "tests/kpop/test_e2e_sync_run.py::test_run_logs_its_starting_reward_and_explains_a_low_start_after_the_anneal"),
    "train.": Consumer(("kpop/loop",), "tests/kpop/test_e2e_sync_run.py::test_rerun_on_the_run_directory_resumes_after_the_last_checkpoint"),
    "scheduler[kpop].": Consumer(("kpop/loop", "kpop/scheduler", "kpop/launch.py"),
                                 "tests/kpop/test_scheduler_units.py::test_capacity_formula_and_eta_zero_is_synchronous"),
    # LearnerSpec travels whole to the learner ranks (kpop.learner, its FP4 recipes in kpop.quant).
    "learner.": Consumer(("learner", "quant", "kpop/launch.py"),
                         "tests/learner/test_learner_minibatches.py::test_objectives_coincide_with_one_minibatch_and_differ_with_four"),
    "learner.objective": Consumer(("learner",), "tests/learner/test_learner_objectives.py::test_gspo_hand_computed"),
    "learner.off_policy": Consumer(("learner",), "tests/learner/test_learner_offpolicy.py::test_kpop_cap_filters_the_large_ratios_the_binary_kl_admits"),
    "learner.quant.": Consumer(("quant",), "tests/quant/test_quant_apply.py::test_learner_quant_spec_defaults_validation_and_apply"),
    # The rounds' schedule and sampling are the loop's (kpop.stages); their losses the learner's.
    "learner.distill.": Consumer(("kpop/stages", "learner"),
                                 "tests/kpop/test_e2e_rounds.py::test_distillation_cuts_the_rechecks_and_shortens_held_out_correct_responses"),
    "learner.preference.": Consumer(("kpop/stages", "learner"),
                                    "tests/kpop/test_e2e_rounds.py::test_preference_round_trains_pairs_against_the_policy_at_its_start"),
}

# Settings the spec refuses to change, with the reason the message must give.
REFUSED: dict[str, str] = {}

# Fields with no other valid value: a one-variant union's tag, and an acknowledgement that must be true.
FIXED = {"sandbox.backend[process].unsafe"}


@dataclass(frozen=True)
class Change:
    path: str          # e.g. "learner.objective[lpo].clip_eps", "envs.0.rewards.0[format].type"
    base: dict         # spec data that validates, with the enclosing variants and list entries chosen
    keys: tuple        # where the value sits in the data
    value: Any         # the new value; for a `type` switch: the variant's data
    name: str          # the field's name (what a consumer reads)


def _put(data: dict, keys: tuple, value: Any) -> dict:
    """A copy of `data` with `value` at `keys` (ints index lists, created as needed); a mapping
    value is merged into the mapping already there."""
    data = copy.deepcopy(data)
    node: Any = data
    for key, nxt in itertools.pairwise(keys):
        if isinstance(key, int):
            node.extend({} for _ in range(key + 1 - len(node)))
            node = node[key]
        else:
            node = node.setdefault(key, [] if isinstance(nxt, int) else {})
    last = keys[-1]
    if isinstance(last, int):
        node.extend({} for _ in range(last + 1 - len(node)))
    old = node[last] if isinstance(last, int) or last in node else None
    node[last] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return data


def _candidates(annotation: Any, current: Any) -> list[Any]:
    """Values to try in place of `current`, most natural first; the first that validates is used."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return [a for a in args if a != current]
    if origin in (Union, types.UnionType):
        values = [v for a in args if a is not type(None) for v in _candidates(a, current)]
        return values + ([None] if type(None) in args and current is not None else [])
    if annotation is bool:
        return [not current]
    if annotation is int:
        return [1, 2, 16] if current is None else [current + 1, current * 2, current - 1, current // 2, 1, 2]
    if annotation is float:
        return [0.5, 1.5, 2.0] if current is None else [current * 0.5, current * 2, current + 0.1, 0.5, 1.5, 0.05]
    if annotation is str:
        return ["x"] if current is None else [current + "2"]
    if annotation is Path:
        return [str(REPO / "examples")]  # an existing folder
    if origin is list:
        return [[*current, "x"], [*current, "/opt"]]
    if origin is dict:
        return [{**current, "x": 1.0}, {**current, "x": "x"}]
    if origin is tuple:
        return [tuple(v * 0.9 for v in current)]
    raise TypeError(f"no candidate values for {annotation}: teach _candidates this type")


def _walk(model: type[BaseModel] = RunSpec, keys: tuple = (), label: str = "", base: dict | None = None) -> Iterator[Change]:
    base = base or {}
    for name, field in model.model_fields.items():
        members = models_in(field.annotation)
        if not members:
            if name != "type":
                yield Change(label + name, base, keys + (name,), field, name)
            continue
        in_list = typing.get_origin(field.annotation) is list
        tagged = all("type" in m.model_fields for m in members)
        sub = keys + ((name, 0) if in_list else (name,))
        for i, member in enumerate(members):
            chosen = {**({"type": variant_tag(member)} if tagged else {}), **NEEDS.get(member, {})}
            inner = _put(base, sub, chosen) if chosen or in_list else base
            path = f"{label}{name}{'.0' if in_list else ''}{f'[{variant_tag(member)}]' if tagged else ''}"
            if tagged and (in_list or i > 0):
                # a list entry of this variant versus none; a field's variant versus its default one
                first = {"type": variant_tag(members[0]), **NEEDS.get(members[0], {})}
                yield Change(path + ".type", base if in_list else _put(base, sub, first), sub, chosen, "type")
            elif tagged and len(members) == 1:
                yield Change(path + ".type", inner, sub, None, "type")
            yield from _walk(member, sub, path + ".", inner)


def _at(spec: RunSpec, keys: tuple) -> Any:
    node: Any = spec
    for key in keys:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _changed(change: Change) -> dict | None:
    """The changed spec data, or None when the field has no other valid value."""
    if change.name == "type":
        return None if change.value is None else _put(change.base, change.keys, change.value)
    current = _at(validate_spec(change.base), change.keys)
    tried = [VALUES[change.path]] if change.path in VALUES else _candidates(change.value.annotation, current)
    for value in tried:
        data = _put(change.base, change.keys, value)
        if value != current and _validates(data):
            return data
    return None


def _validates(data: dict) -> bool:
    try:
        validate_spec(data)
    except SpecError:
        return False
    return True


@cache
def _reads(source: str) -> frozenset[str]:
    """Names read anywhere in a file or a folder's Python files: attributes, and identifier strings
    (a field read with getattr, e.g. through a table of field names)."""
    root = REPO / source
    files = [root] if root.is_file() else [f for f in sorted(root.rglob("*.py")) if "spec" not in f.relative_to(REPO).parts[:2]]
    nodes = [node for f in files for node in ast.walk(ast.parse(f.read_text()))]
    return frozenset([n.attr for n in nodes if isinstance(n, ast.Attribute)] +
                     [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier()])


def _consumer(path: str) -> tuple[str, Consumer] | None:
    matches = [p for p in CONSUMED_ELSEWHERE if path.startswith(p)]
    return (max(matches, key=len), CONSUMED_ELSEWHERE[max(matches, key=len)]) if matches else None


def _in_context(change: Change) -> Change:
    found = next((where for prefix, where in CONTEXT.items() if change.path.startswith(prefix)), None)
    return change if found is None else dataclasses.replace(change, base=_put(change.base, *found))


CHANGES = [_in_context(c) for c in _walk()]


def test_the_walk_reaches_every_section_variant_and_list_entry():
    paths = {c.path for c in CHANGES}
    assert {"seed", "envs.0.options", "envs.0.rewards.0[dynamic_length].alpha", "sandbox.limits.wall_s",
            "learner.objective[lpo].punctuation", "scheduler[kpop].dpr.window", "model[hybrid].type",
            "sandbox.backend[docker].image", "logging.wandb.tags"} <= paths
    assert len(paths) == len(CHANGES)


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.path)
def test_every_field_changes_the_runtime_configuration_or_is_consumed_by_name(change):
    refused = next((why for prefix, why in REFUSED.items() if change.path.startswith(prefix)), None)
    if refused is not None:
        _assert_refused(change, refused)
        return
    changed = _changed(change)
    if changed is None:
        assert change.path in FIXED, f"{change.path}: no other valid value found; list it in FIXED or teach _candidates"
        return
    assert change.path not in FIXED, f"{change.path} has another valid value: remove it from FIXED"
    base, new = validate_spec(change.base), validate_spec(changed)
    if runtime_config(base, MODEL_DIR) != runtime_config(new, MODEL_DIR):
        assert any(change.name in _reads(s) for s in CODE), f"{change.path}: no code outside kpop/spec reads '{change.name}'"
        return
    found = _consumer(change.path)
    assert found is not None, (f"{change.path}: changing it changes no runtime configuration and no consumer is listed: "
                               f"make kpop.runtime carry it, list its consumer in CONSUMED_ELSEWHERE, or refuse it")
    prefix, consumer = found
    assert any(change.name in _reads(s) for s in consumer.sources), (
        f"{change.path}: none of {consumer.sources} (listed for {prefix!r}) reads '{change.name}'")


def _assert_refused(change: Change, why: str) -> None:
    owner = _at(RunSpec(), change.keys[:-1])
    field = type(owner).model_fields[change.name]
    current = getattr(owner, change.name)
    values = [v for v in _candidates(field.annotation, current) if v != current and _owner_accepts(owner, change.name, v)]
    assert values, f"{change.path}: no value its own section accepts"
    with pytest.raises(SpecError) as info:
        validate_spec(_put(change.base, change.keys, values[0]))
    assert why in str(info.value)


def _owner_accepts(owner: BaseModel, name: str, value: Any) -> bool:
    try:
        type(owner).model_validate({name: value})
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("prefix", "consumer"), CONSUMED_ELSEWHERE.items(), ids=list(CONSUMED_ELSEWHERE))
def test_every_listed_consumer_is_needed_and_names_a_real_test(prefix, consumer):
    for source in consumer.sources:
        assert (REPO / source).exists(), source
    file, _, name = consumer.proof.partition("::")
    tree = ast.parse((REPO / file).read_text())
    assert name in {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}, consumer.proof
    assert any(_consumer(c.path) == (prefix, consumer) for c in CHANGES), f"{prefix!r} matches no field"


def test_bootstrap_reads_the_model_and_tokenizer_sections(tmp_path, monkeypatch):
    """A fresh model is built from model.* and a tokenizer of tokenizer.vocab_size; given folders are used as they are."""
    from kpop import bootstrap

    built = {}
    monkeypatch.setattr(bootstrap, "solver_corpus", lambda spec, num: ["1 + 2 = 3"] * 8)
    monkeypatch.setattr("kpop.models.tokenizer.train_tokenizer", lambda corpus, size, out: built.setdefault("vocab", size) and "tok")
    monkeypatch.setattr("kpop.models.tiny_llama.build_tiny_llama", lambda model, tok, out, seed: built.setdefault("model", model))
    spec = validate_spec({"run_dir": str(tmp_path), "tokenizer": {"vocab_size": 512}, "model": {"hidden_size": 64}})
    assert bootstrap.prepare_initial_model(spec) == tmp_path / "init"
    assert built == {"vocab": 512, "model": spec.model}
    given = validate_spec({"model": {"path": str(REPO / "examples")}})
    assert bootstrap.prepare_initial_model(given) == REPO / "examples"
