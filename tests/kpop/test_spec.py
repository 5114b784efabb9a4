"""RunSpec loading: defaults, overrides, and readable errors for every kind of bad input."""

import json
from pathlib import Path

import pytest
import yaml

from kpop.spec import RunSpec, SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, list(overrides))
    return [str(p) for p in info.value.problems]


def test_embedded_defaults_are_valid_and_fill_run_dir():
    spec = load_spec(None)
    assert isinstance(spec, RunSpec)
    assert spec.run_dir == Path("runs") / spec.name
    assert spec.envs[0].name == "calculator"


@pytest.mark.parametrize("path", sorted(p for p in REPO.rglob("*.yaml") if ".venv" not in p.parts and "runs" not in p.parts and "deploy" not in p.parts))
def test_every_shipped_yaml_spec_loads(path):
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "name" in data and "envs" in data:
        load_spec(path)


def test_shipped_specs_exist():
    assert (REPO / "examples" / "quickstart.yaml").is_file()


def test_unknown_key_names_its_path_and_the_allowed_keys(tmp_path):
    [msg] = problems(write(tmp_path, "learner:\n  bogus: 1\n"))
    assert msg.startswith("learner.bogus: unknown key 'bogus'")
    assert "allowed here:" in msg and "lr" in msg and "zero_stage" in msg


def test_misspelled_key_suggests_the_closest(tmp_path):
    [msg] = problems(write(tmp_path, "rollout:\n  sampling:\n    temprature: 0.5\n"))
    assert "rollout.sampling.temprature" in msg and "did you mean 'temperature'?" in msg


def test_wrong_type_and_out_of_range_are_both_reported(tmp_path):
    msgs = problems(write(tmp_path, "train:\n  steps: many\nlearner:\n  zero_stage: 7\n"))
    assert len(msgs) == 2
    assert any(m.startswith("train.steps:") and "valid integer" in m and "'many'" in m for m in msgs)
    assert any(m.startswith("learner.zero_stage:") and "less than or equal to 3" in m for m in msgs)


def test_error_inside_a_variant_drops_the_union_tag(tmp_path):
    [msg] = problems(write(tmp_path, "rollout:\n  engine:\n    kv_cache_gib: -1\n"))
    assert msg.startswith("rollout.engine.kv_cache_gib:") and "greater than 0" in msg


def test_unknown_variant_type_lists_the_allowed_types(tmp_path):
    [msg] = problems(write(tmp_path, "rollout:\n  engine:\n    type: sglang\n"))
    assert msg.startswith("rollout.engine:") and "'sglang'" in msg and "'vllm'" in msg


def test_missing_spec_file():
    [msg] = problems(Path("/nonexistent/spec.yaml"))
    assert "spec file not found" in msg


def test_missing_model_folder(tmp_path):
    [msg] = problems(write(tmp_path, f"model:\n  path: {tmp_path / 'nope'}\n"))
    assert msg.startswith("model.path:") and "does not exist" in msg


def test_not_yaml_and_not_a_mapping(tmp_path):
    assert "not valid YAML" in problems(write(tmp_path, "a: [1, 2\n"))[0]
    assert "must be a mapping" in problems(write(tmp_path, "- 1\n- 2\n"))[0]


def test_set_overrides_are_typed_and_validated(tmp_path):
    spec = load_spec(write(tmp_path, "name: x\n"), ["learner.lr=1e-4", "rollout.group_size=4", "envs.0.weight=2"])
    assert spec.learner.lr == pytest.approx(1e-4) and spec.rollout.group_size == 4 and spec.envs[0].weight == 2
    assert "learner.lr:" in problems(None, ["learner.lr=-1"])[0]


def test_yaml_off_means_the_word_off(tmp_path):
    assert load_spec(write(tmp_path, "logging:\n  progress: off\n")).logging.progress == "off"


def test_set_keeps_yaml_boolean_words_as_words():
    assert load_spec(None, ["logging.progress=off"]).logging.progress == "off"
    assert load_spec(None, ["rollout.engine.enforce_eager=false"]).rollout.engine.enforce_eager is False


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "envs.5.weight=1", "name.x=1"])
def test_bad_set_is_a_clear_error(bad):
    [msg] = problems(None, [bad])
    assert "bad --set" in msg


def test_unknown_env_and_bad_env_options_name_their_entries(tmp_path):
    from kpop.spec.resolve import check_run

    spec = load_spec(write(tmp_path, "envs:\n  - name: calculater\n  - name: calculator\n    options: {max_operand: -3}\n"))
    with pytest.raises(SpecError) as info:
        check_run(spec, "spec.yaml")
    msgs = [str(p) for p in info.value.problems]
    assert msgs[0].startswith("envs.0.name:") and "did you mean 'calculator'" in msgs[0]
    assert msgs[1].startswith("envs.1.options:") and "max_operand" in msgs[1]


def test_anneal_options_must_name_a_run_env_and_fit_its_options(tmp_path):
    from kpop.spec.resolve import check_run

    text = ("envs:\n  - name: calculator\n    options: {max_operand: 20}\nsft:\n  anneal:\n    steps: 5\n"
            "    env_options:\n      search: {hops: 1}\n      calculator: {reference_tool_rate: 2}\n")
    with pytest.raises(SpecError) as info:
        check_run(load_spec(write(tmp_path, text)), "spec.yaml")
    msgs = sorted(str(p) for p in info.value.problems)
    assert msgs[0].startswith("sft.anneal.env_options.calculator:") and "reference_tool_rate" in msgs[0]
    assert msgs[1].startswith("sft.anneal.env_options.search:") and "not an environment of this run" in msgs[1]
    good = text.replace("reference_tool_rate: 2", "reference_tool_rate: 0.3").replace("      search: {hops: 1}\n", "")
    check_run(load_spec(write(tmp_path, good)), "spec.yaml")
    assert any("first cold-start phase" in m for m in problems(None, ["sft.steps=0", "sft.anneal.steps=3"]))


def test_run_refuses_what_it_cannot_do_yet(tmp_path):
    from kpop.spec.resolve import check_run

    # settings of rounds that never run: refused when the spec is read, naming the field and why
    for overrides in (["learner.distill.lr=0.01"], ["learner.preference.beta=0.3"]):
        [msg] = problems(None, overrides)
        assert msg.startswith("learner: learner.") and "round runs (learner." in msg
    assert load_spec(None).learner.distill.lr is None                  # the defaults are fine
    # a sandbox wall clock the environment step would cut short
    with pytest.raises(SpecError) as info:
        check_run(load_spec(None, ["sandbox.limits.wall_s=10"]), "spec.yaml")
    [problem] = info.value.problems
    assert problem.path == "sandbox.limits.wall_s" and "rollout.env_step_timeout_s (10 s)" in problem.message
    check_run(load_spec(None, ["sandbox.limits.wall_s=10", "rollout.env_step_timeout_s=30"]), "spec.yaml")
    # a local Ray size next to a cluster address
    [msg] = problems(None, ["cluster.address=auto", "cluster.num_cpus=4"])
    assert msg.startswith("cluster:") and "remove one of the two" in msg


def _run_problems(overrides: list[str]) -> list:
    from kpop.spec.resolve import check_run

    try:
        check_run(load_spec(None, overrides), "spec.yaml")
    except SpecError as exc:
        return list(exc.problems)
    return []


def test_run_refuses_a_model_it_cannot_train_or_serve_here(tmp_path):
    """Named field and what would work: a checkpoint of the other type, vLLM for the hybrid on CPU, a
    preset too large for this machine."""
    hybrid, llama = tmp_path / "hybrid", tmp_path / "llama"
    for folder, model_type in ((hybrid, "bailing_hybrid"), (llama, "llama")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    [p] = _run_problems([f"model.path={hybrid}"])                       # model.type defaults to llama
    assert p.path == "model.type" and "'bailing_hybrid'" in p.message and "model.type: hybrid" in p.message
    [p] = _run_problems(["model.type=hybrid", f"model.path={llama}", "rollout.engine.type=builtin"])
    assert p.path == "model.type" and "model.type: llama" in p.message
    [p] = _run_problems(["model.type=hybrid", f"model.path={tmp_path}", "rollout.engine.type=builtin"])
    assert p.path == "model.path" and "no config.json" in p.message
    [p] = _run_problems(["model.type=hybrid"])                          # the default engine is vLLM
    assert p.path == "rollout.engine.type" and "builtin" in p.message and "GPU" in p.message
    [p] = _run_problems(["model.type=hybrid", "model.preset=1t", "rollout.engine.type=auto"])
    assert p.path == "model.preset" and "1049.7 B parameters" in p.message and "'tiny'" in p.message
    # what works: a fresh tiny hybrid on either engine rule, a matching checkpoint, vLLM when engines get GPUs
    assert _run_problems(["model.type=hybrid", "rollout.engine.type=auto"]) == []
    assert _run_problems(["model.type=hybrid", f"model.path={hybrid}", "rollout.engine.type=builtin"]) == []
    assert _run_problems(["model.type=hybrid", f"model.path={hybrid}", "rollout.engine.num_gpus=1"]) == []


def test_run_refuses_an_episode_budget_longer_than_the_models_context(tmp_path):
    [p] = _run_problems(["rollout.max_total_tokens=1024"])              # the tiny Llama accepts 512
    assert p.path == "rollout.max_total_tokens" and "at most 512" in p.message and "model.max_position_embeddings" in p.message
    assert _run_problems(["rollout.max_total_tokens=1024", "model.max_position_embeddings=1024"]) == []
    [p] = _run_problems(["model.type=hybrid", "rollout.engine.type=builtin", "rollout.max_total_tokens=600"])
    assert p.path == "rollout.max_total_tokens" and "accepts 512" in p.message    # the tiny preset's RoPE table
    assert _run_problems(["model.type=hybrid", "rollout.engine.type=builtin", "rollout.max_total_tokens=600",
                          "model.max_position_embeddings=1024"]) == []
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    assert _run_problems([f"model.path={folder}"]) == []                # the default budget, 256, fits
    [p] = _run_problems([f"model.path={folder}", "rollout.max_total_tokens=300"])
    assert p.path == "rollout.max_total_tokens" and "a checkpoint with a longer context" in p.message
