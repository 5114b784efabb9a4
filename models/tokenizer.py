"""Train a small byte-level BPE tokenizer locally and save it in Hugging Face format.

The tokenizer carries a chat template that is *append-only*: rendering messages[:k] is a prefix of
rendering messages, and nothing is emitted after `<|im_end|>`, so the tokens a model generates
(ending with `<|im_end|>`) followed by the tokens of the next rendered message equal the tokens of
the whole rendered conversation. The agent loop relies on this to keep token ids end to end.

Digits are split individually (arithmetic tasks stay learnable) and tool-call tags are atomic tokens.
No downloads: everything is built from the texts given.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
IM_START = "<|im_start|>"
ATOMIC = ["<tool_call>", "</tool_call>", "<think>", "</think>"]

CHAT_TEMPLATE = (
    "{% if tools %}" + IM_START + "system\n# Tools\n{{ tools | tojson }}" + EOS + "{% endif %}"
    "{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + EOS + "{% endfor %}"
    "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _compiled_template():
    import jinja2

    env = jinja2.Environment()
    env.filters["tojson"] = lambda value: json.dumps(value)
    return env.from_string(CHAT_TEMPLATE)


def render_chat(messages: list[dict], tools: list[dict] | None = None) -> str:
    """Render a conversation with CHAT_TEMPLATE without a tokenizer (for training-corpus text)."""
    return _compiled_template().render(messages=messages, tools=tools, add_generation_prompt=False)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path):
    """Train on `texts`, save to `out_dir` and return the transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, IM_START]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_tokens(ATOMIC)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[IM_START], clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in `folder` (a checkpoint or a tokenizer folder), never prompting.

    A hybrid checkpoint's config.json names its configuration module in `auto_map` for readers
    that run repository code (vLLM with trust_remote_code). Given such a folder, AutoTokenizer
    reads the config and, asked nothing, stops on stdin for up to 15 s with "Do you wish to run
    the custom code? [y/N]". The tokenizer itself is plain BPE and needs no code, so nothing is run.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
