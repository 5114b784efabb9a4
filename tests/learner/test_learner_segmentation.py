"""Sentence segmentation for LPO: punctuation, turns, byte-split characters, a real tokenizer."""

from kpop.learner.segmentation import sentence_units, token_texts, tokenizer_decoder

VOCAB = {1: "Hello", 2: " world", 3: ".", 4: " How", 5: " are", 6: " you", 7: "?", 8: "\n", 9: "<obs>", 10: " x=3,"}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_sentences_end_at_the_punctuation_token_and_never_cross_turns():
    ids = [9, 1, 2, 3, 4, 5, 6, 7, 9, 1, 8, 2, 10, 4]
    mask = [0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]
    assert sentence_units(ids, mask, decode) == [-1, 0, 0, 0, 1, 1, 1, 1, -1, 2, 2, 3, 3, 4]
    # a turn ending without punctuation still closes its sentence at the observation
    assert sentence_units([9, 1, 2, 9, 4], [0, 1, 1, 0, 1], decode) == [-1, 0, 0, -1, 1]


def test_custom_punctuation_set():
    ids, mask = [9, 1, 10, 4, 3], [0, 1, 1, 1, 1]
    assert sentence_units(ids, mask, decode, punctuation=".") == [-1, 0, 0, 0, 0]


BYTES = {0: b"Q", 1: "好".encode(), 2: b"\xe3", 3: b"\x80", 4: b"\x82", 5: b"x"}   # 2,3,4 = "。"


def byte_decode(ids):
    return b"".join(BYTES[i] for i in ids).decode("utf-8", errors="replace")


def test_character_split_over_byte_tokens_ends_at_the_completing_token():
    ids, mask = [0, 1, 2, 3, 4, 5], [0, 1, 1, 1, 1, 1]
    assert token_texts(ids[1:], byte_decode)[-2] == "。"
    assert sentence_units(ids, mask, byte_decode) == [-1, 0, 0, 0, 0, 1]


def test_real_tokenizer_spans_match_the_text(learner_tokenizer):
    tok = learner_tokenizer
    text = "Yes. First, add the numbers\nthen divide"
    ids = [1] + tok(text, add_special_tokens=False)["input_ids"]
    units = sentence_units(ids, [0] + [1] * (len(ids) - 1), tokenizer_decoder(tok))
    pieces = {}
    for i, u in zip(ids[1:], units[1:]):
        pieces.setdefault(u, []).append(i)
    sentences = [tok.decode(v).strip() for _, v in sorted(pieces.items())]
    assert sentences == ["Yes.", "First,", "add the numbers", "then divide"]
