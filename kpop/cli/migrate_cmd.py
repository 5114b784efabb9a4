"""`kpop migrate SRC DST`: turn a Llama/Qwen2-style GQA checkpoint into the hybrid Lightning/MLA layout.

Writes a `bailing_hybrid` checkpoint (config.json, model.safetensors) plus `migration.json` with the
freezing schedule of the warm-up phases (see kpop.models.migrate) and the source's tokenizer and
chat template, so `model: {type: hybrid, path: DST}` trains it.
"""

from __future__ import annotations

import argparse

NAME = "migrate"
HELP = "Convert a GQA (Llama/Qwen2) checkpoint into the hybrid Lightning-Attention/MLA layout."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source Hugging Face checkpoint folder (Llama / Qwen2 / Qwen3 architecture)")
    parser.add_argument("dst", help="folder to write the hybrid checkpoint to")
    parser.add_argument("--layer-group-size", type=int, default=8, help="M: every M-th layer becomes MLA (default 8)")
    parser.add_argument("--kv-widen", choices=["random", "repeat"], default="random",
                        help="new key/value heads of Lightning layers: random init (reference) or copies of their GQA head")
    parser.add_argument("--kv-lora-rank", type=int, default=None, help="MLA latent rank (default: lossless rank, capped by the source)")
    parser.add_argument("--seed", type=int, default=0, help="seed for new parameters and calibration tokens")


def run(args: argparse.Namespace) -> int:
    from kpop.models.migrate.gqa_to_hybrid import migrate_checkpoint

    dst = migrate_checkpoint(args.src, args.dst, args.layer_group_size, args.kv_widen, args.kv_lora_rank, args.seed)
    print(f"wrote hybrid checkpoint to {dst}")
    return 0
