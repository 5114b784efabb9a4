"""Shared test infrastructure: one Ray session per test run, GPU-marker skipping, tiny local models.

Nothing here downloads from a hub: tokenizers and models are built from scratch in tmp folders.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker 'gpu'); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray instance shared by every test that needs actors."""
    import ray

    if not ray.is_initialized():
        from kpop.launch import RAY_SYSTEM_CONFIG

        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True, configure_logging=False,
                 _system_config=RAY_SYSTEM_CONFIG)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama checkpoint with a BPE tokenizer trained on calculator transcripts (built locally)."""
    from kpop.bootstrap import prepare_initial_model
    from kpop.spec import load_spec

    run_dir = tmp_path_factory.mktemp("tiny_llama_run")
    # init std 0.02: engine tests need long greedy generations from this random model; at the
    # quickstart's 0.06 a random model may emit EOS within a few tokens.
    spec = load_spec(None, [f"run_dir={run_dir}", "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2",
                            "model.num_kv_heads=1", "model.init_std=0.02"])
    return prepare_initial_model(spec)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def benchmark():
    """`benchmark("quant_train")`: the module of benchmarks/quant_train.py (benchmarks are scripts,
    not a package), loaded once per name."""
    import importlib.util
    import sys
    from pathlib import Path

    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module   # dataclasses look their module up there
            if str(path.parent) not in sys.path:   # as `python benchmarks/x.py` runs: its siblings import
                sys.path.append(str(path.parent))
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def ask_checkpoint():
    """`ask_checkpoint(folder, **create_args)`: serve a checkpoint with `kpop serve`, ask it "What is
    2+3?" through the official `openai` client; returns (the listed model, the chat completion)."""
    def ask(folder, **create_args):
        import openai

        from kpop.deploy.server_process import ServerProcess

        with ServerProcess(folder) as server:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
            [model] = client.models.list().data
            reply = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "What is 2+3?"}],
                                                   temperature=0, **create_args)
        return model, reply

    return ask
