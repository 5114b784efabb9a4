"""Backend choice from the checkpoint, stop-string handling in streams, and the CLI's guard rails
(no engine is started here)."""

from __future__ import annotations

import json
import shutil

import pytest

from kpop.deploy.openai_api.app import create_app, serving
from kpop.deploy.openai_api.backends import (
    BackendChoice,
    EngineOptions,
    build_engine,
    choose_backend,
)
from kpop.deploy.openai_api.generation import TextTracker


def with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_standard_llama_goes_to_vllm_and_odd_or_hybrid_checkpoints_to_the_builtin_engine(tiny_llama_dir, tmp_path):
    assert choose_backend(tiny_llama_dir, gpu=False).kind == "vllm"
    narrow = with_config(tiny_llama_dir, tmp_path / "narrow", num_attention_heads=4, num_key_value_heads=1,
                         head_dim=16)
    choice = choose_backend(narrow, gpu=False)
    assert choice.kind == "builtin" and "head size 16" in choice.reason
    hybrid = with_config(tiny_llama_dir, tmp_path / "hybrid", model_type="bailing_hybrid",
                         architectures=["BailingMoeV2_5ForCausalLM"])
    assert choose_backend(hybrid, gpu=False).kind == "builtin"
    assert choose_backend(hybrid, gpu=True).kind == "vllm"
    unknown = with_config(tiny_llama_dir, tmp_path / "unknown", architectures=["NoSuchForCausalLM"])
    assert choose_backend(unknown, gpu=False).kind == "builtin"
    with pytest.raises(FileNotFoundError):
        choose_backend(tmp_path)


async def test_builtin_backend_serves_chat_and_streams_through_the_same_app(tiny_llama_dir):
    import openai
    from transformers import AutoTokenizer

    from kpop.deploy.openai_api.service import ModelInfo, OpenAIService

    engine = build_engine(tiny_llama_dir, BackendChoice("builtin", "test"), EngineOptions(max_model_len=256))
    try:
        assert type(engine).__name__ == "BuiltinEngine"
        service = OpenAIService(engine, AutoTokenizer.from_pretrained(str(tiny_llama_dir)),
                                ModelInfo("tiny", str(tiny_llama_dir), 256, "builtin"))
        async with serving(create_app(service)) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
            messages = [{"role": "user", "content": "What is 2+3?"}]
            whole = await client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                         max_tokens=12, logprobs=True)
            chunks = [c async for c in await client.chat.completions.create(
                model="tiny", messages=messages, temperature=0, max_tokens=12, stream=True)]
    finally:
        await engine.close()
    assert whole.usage.completion_tokens >= 1 and all(e.logprob <= 0 for e in whole.choices[0].logprobs.content)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content


def test_stream_text_never_emits_what_a_stop_string_retracts(tiny_tokenizer):
    ids = tiny_tokenizer.encode("Answer: 12 then the END of it", add_special_tokens=False)
    tracker = TextTracker(tiny_tokenizer, ["END", "zzz"])
    pieces = [tracker.push([t]) for t in ids]
    pieces.append(tracker.flush())
    assert "".join(pieces) == "Answer: 12 then the " == tracker.text()
    assert tracker.final is not None
    plain = TextTracker(tiny_tokenizer, ["zzz"])
    assert "".join([plain.push([t]) for t in ids] + [plain.flush()]) == "Answer: 12 then the END of it"


def test_kpop_serve_rejects_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    from kpop.cli.main import main

    assert main(["serve", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
