"""Sentence segmentation of generated tokens for LPO, mapped back to token spans.

Rules (the Ling 2.0 report only says "common pause punctuation"; these are our choices):
- only policy-generated tokens (loss_mask 1) are segmented; each model turn (a maximal run of
  generated tokens) is segmented on its own, so a sentence never crosses an observation;
- a token ends a sentence when the text it adds contains a pause character: . ! ? ; : , and their
  full-width forms 。！？；：，, or a newline (the set is `LPOSpec.punctuation`); the sentence is
  every token since the previous end, the punctuation token included;
- trailing tokens of a turn without punctuation form a last sentence;
- text is decoded incrementally over a short window of preceding tokens, so a character split
  across byte-level tokens (e.g. '。' over three byte tokens) is attributed to the token that
  completes it.

Output: one unit index per token, numbered 0, 1, ... across the trajectory, -1 for tokens not
trained on. Invariant: units are contiguous, non-decreasing over generated tokens and never
span two turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_PUNCTUATION = ".!?;:,。！？；：，"
_WINDOW = 4
_REPLACEMENT = "\ufffd"


def token_texts(token_ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each token adds to the decoded string (incremental decode over a small window)."""
    out = []
    for k in range(len(token_ids)):
        lo = max(0, k - _WINDOW)
        prev = decode(list(token_ids[lo:k])).rstrip(_REPLACEMENT) if k > lo else ""
        cur = decode(list(token_ids[lo:k + 1]))
        out.append(cur[len(prev):] if cur.startswith(prev) else decode([token_ids[k]]))
    return out


def ends_sentence(text: str, punctuation: str = DEFAULT_PUNCTUATION) -> bool:
    return "\n" in text or any(c in punctuation for c in text)


def sentence_units(token_ids: Sequence[int], loss_mask: Sequence[int], decode: Callable[[list[int]], str],
                   punctuation: str = DEFAULT_PUNCTUATION) -> list[int]:
    """Unit index per token (see module docstring)."""
    units = [-1] * len(token_ids)
    unit, open_unit, t = -1, False, 0
    while t < len(token_ids):
        if not loss_mask[t]:
            t += 1
            continue
        end = t
        while end < len(token_ids) and loss_mask[end]:
            end += 1
        texts = token_texts(token_ids[t:end], decode)
        open_unit = False
        for k, text in enumerate(texts):
            if not open_unit:
                unit, open_unit = unit + 1, True
            units[t + k] = unit
            if ends_sentence(text, punctuation):
                open_unit = False
        t = end
    return units


def tokenizer_decoder(tokenizer) -> Callable[[list[int]], str]:
    """A decode function for a Hugging Face tokenizer that keeps special tokens and raw spacing."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return decode
