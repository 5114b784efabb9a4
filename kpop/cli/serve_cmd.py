"""`kpop serve CHECKPOINT`: an OpenAI-compatible endpoint for a checkpoint folder.

Serves Hugging Face-format checkpoints (what `kpop run` writes under checkpoints/) with KPop's own
OpenAI-compatible app (kpop.deploy.serve): vLLM where vLLM can run the checkpoint, KPop's built-in
engine otherwise. Binds loopback by default. Routes: /v1/models, /v1/completions,
/v1/chat/completions, /health, /metrics. Engine settings the flags leave unset (KV cache, seed,
concurrent requests) are those of the run that wrote the checkpoint, through the runtime
configuration a run's own engines get (kpop.runtime), or the RunSpec defaults without a record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "serve"
HELP = "Serve a checkpoint behind an OpenAI-compatible HTTP endpoint."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder (e.g. runs/quickstart/checkpoints/last)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: the folder name)")
    parser.add_argument("--backend", choices=["auto", "vllm", "builtin"], default="auto",
                        help="engine (default: vLLM where it can run the checkpoint, the built-in engine otherwise)")
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="KV-cache memory, GiB (vLLM; default: the run's)")
    parser.add_argument("--max-model-len", type=int, default=None, help="longest sequence served")
    parser.add_argument("--seed", type=int, default=None, help="engine seed (default: the run's)")
    parser.add_argument("--max-body-bytes", type=_positive, default=None,
                        help="largest request body accepted, bytes; larger ones get 413 at once (default: a "
                             "prompt of the whole context JSON-escaped, plus 1 MiB)")
    parser.add_argument("--max-prompt-chars", type=_positive, default=None,
                        help="longest prompt accepted, characters; longer ones get 400 before tokenisation "
                             "(default: context length x the tokenizer's longest token)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        print(f"error: {folder} is not a checkpoint folder (no config.json); give e.g. runs/<name>/checkpoints/last",
              file=sys.stderr)
        return 2
    from kpop.deploy.serve import ServeConfig, serve
    from kpop.runtime.build import engine_launch
    from kpop.runtime.recorded import recorded_spec
    from kpop.spec import SpecError

    try:
        spec, _ = recorded_spec(folder)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine = engine_launch(spec, folder, 0).config  # a VLLMEngineConfig or a BuiltinEngineConfig
    kv_cache_gib = getattr(engine, "kv_cache_gib", ServeConfig.kv_cache_gib)  # the built-in engine has none
    serve(ServeConfig(checkpoint=str(folder), host=args.host, port=args.port,
                      served_model_name=args.served_model_name, backend=args.backend,
                      kv_cache_gib=kv_cache_gib if args.kv_cache_gib is None else args.kv_cache_gib,
                      max_model_len=args.max_model_len, seed=engine.seed if args.seed is None else args.seed,
                      max_num_seqs=spec.rollout.engine.max_num_seqs, log_level=args.log_level,
                      max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars))
    return 0
