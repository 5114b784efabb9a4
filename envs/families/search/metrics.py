"""Answer metrics: SQuAD-style normalised exact match and token F1.

Normalisation lower-cases, drops punctuation and the articles a/an/the, and collapses whitespace.
`extract_answer` takes the text after the last `Answer:` when there is one, else the whole text,
so a model may reason before answering.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ANSWER = re.compile(r"answer\s*:\s*(.*)", re.IGNORECASE)


def extract_answer(text: str) -> str:
    matches = _ANSWER.findall(text)
    return (matches[-1] if matches else text).strip()


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize(prediction) == normalize(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize(prediction).split(), normalize(truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
