"""Verifiable rules of the instruction-following family: what each says and how it is checked.

Every checker is a pure function of the reply text and the rule's parameters, returning whether
the rule holds. Definitions they share:
- a word is a maximal run of letters (an apostrophe between letters joins them: "don't" is one
  word); digits and punctuation are not words, so "1." of a list item and JSON braces count 0 and a
  JSON key counts as the words it spells;
- word comparisons are whole-word and case-insensitive ("Ocean" is the word "ocean", "oceans" is not).

The rules (kind: holds when):
- max_words(n): the reply has at most n words;
- min_words(n): the reply has at least n words;
- include_words(w1, ...): every wi occurs as a word;
- forbid_word(w): w does not occur as a word;
- numbered_list(k): the reply is exactly k non-empty lines "1. ...", "2. ...", ..., "k. ..." (")" may
  replace "."; no other lines);
- json_keys(a, ...): the reply is a JSON object (optionally in one ``` or ```json fence) whose keys
  are exactly {a, ...} and whose values are non-empty strings;
- lowercase / uppercase: the reply has a letter and no letter of the other case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
_ITEM = re.compile(r"(\d+)[.)]\s+\S")
_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*)\n```", re.DOTALL)


@dataclass(frozen=True)
class Rule:
    """One rule of a task: `kind` (one of KINDS) with its words (include/forbid/json keys) or count."""

    kind: str
    words: tuple[str, ...] = ()
    count: int = 0

    def holds(self, text: str) -> bool:
        return _CHECKERS[self.kind](text, self)

    def instruction(self) -> str:
        """The rule as the request states it to the model."""
        return _PHRASES[self.kind](self)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def has_word(text: str, word: str) -> bool:
    target = word.casefold()
    return any(w.casefold() == target for w in words(text))


def json_object(text: str) -> dict[str, Any] | None:
    """The reply as a JSON object (the whole reply, or the body of one code fence), else None."""
    body = text.strip()
    fenced = _FENCE.fullmatch(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested input is malformed, not fatal
        return None
    return value if isinstance(value, dict) else None


def is_numbered_list(text: str, k: int) -> bool:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    numbers = [m.group(1) if (m := _ITEM.match(line)) else None for line in lines]
    return numbers == [str(i) for i in range(1, k + 1)]


def has_json_keys(text: str, keys: tuple[str, ...]) -> bool:
    obj = json_object(text)
    if obj is None or set(obj) != set(keys):
        return False
    return all(isinstance(v, str) and v.strip() for v in obj.values())


def in_case(text: str, upper: bool) -> bool:
    return any(c.isalpha() for c in text) and text == (text.upper() if upper else text.lower())


_CHECKERS: dict[str, Callable[[str, Rule], bool]] = {
    "max_words": lambda text, r: len(words(text)) <= r.count,
    "min_words": lambda text, r: len(words(text)) >= r.count,
    "include_words": lambda text, r: all(has_word(text, w) for w in r.words),
    "forbid_word": lambda text, r: not any(has_word(text, w) for w in r.words),
    "numbered_list": lambda text, r: is_numbered_list(text, r.count),
    "json_keys": lambda text, r: has_json_keys(text, r.words),
    "lowercase": lambda text, r: in_case(text, upper=False),
    "uppercase": lambda text, r: in_case(text, upper=True),
}
KINDS = tuple(_CHECKERS)


def _quoted(items: tuple[str, ...]) -> str:
    quoted = [f'"{w}"' for w in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


_PHRASES: dict[str, Callable[[Rule], str]] = {
    "max_words": lambda r: f"Answer in at most {r.count} words.",
    "min_words": lambda r: f"Answer in at least {r.count} words.",
    "include_words": lambda r: f"Include the word{'s' if len(r.words) > 1 else ''} {_quoted(r.words)}.",
    "forbid_word": lambda r: f"Do not use the word {_quoted(r.words)}.",
    "numbered_list": lambda r: f"Reply only with a numbered list of exactly {r.count} items, one per line (1. ..., 2. ...).",
    "json_keys": lambda r: f"Reply only with a JSON object with exactly the keys {_quoted(r.words)}, each with a non-empty string value.",
    "lowercase": lambda r: "Write in lowercase letters only.",
    "uppercase": lambda r: "Write in UPPERCASE letters only.",
}
