"""Task generator of the instruction-following family: a request about a topic plus verifiable rules.

`generate(seed, min_rules, max_rules, held_out_topics, slots)` is a pure function of its arguments (the RNG
is seeded with "instructions:<seed>"). It picks a topic, then between min_rules and max_rules distinct
slots out of `slots` (default: all of SLOTS; max_rules is capped at their number), one rule per slot (rules.py):
- length: max_words(25-60) or min_words(12-30);
- include: 1-2 of the topic's words;
- forbid: one topic word (never the keyword, never a required word);
- format: numbered_list(3-5 items) or json_keys(2-3 keys);
- case: lowercase or uppercase (JSON keys are written in that case, so the two never conflict).
One rule per slot keeps every combination satisfiable, and the length bounds leave room for the
reference reply.

Held-out split: seeds >= kpop.tasks.HELD_OUT_BASE (the task sampler's held-out range) draw their
topic from HELD_OUT_TOPICS, which training seeds never use, so an evaluation measures rule following
on requests no training task made. With held_out_topics=False they draw from TRAIN_TOPICS like
training seeds: held-out tasks are then new combinations of request, topic and rule parameters on
known topics (the split a model too small to copy an unseen topic word can be measured on).

The reference reply is built from the rules' parameters, not by searching against the checkers (the
tests check it against them): the topic keyword and the required words spread over the sentence,
list items or JSON values, neutral padding words up to a minimum length, then the required case.
Two variants of it (the environment's reference options): `pad_to` pads an at-least-n-words reply
to max(n, pad_to) words, a length that holds for every bound up to pad_to without counting; `exact`
puts the reply exactly on its length rule, n words for at least n and for at most n, so only
counting words hits the bound. Both pad with the same words in the same order, so the two differ
only in where they stop.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass

from kpop.envs.families.instructions.rules import Rule, words
from kpop.tasks import HELD_OUT_BASE

SLOTS = ("length", "include", "forbid", "format", "case")
JSON_KEYS = ("title", "summary", "details", "audience", "tone", "verdict", "example", "mood")
# Neutral words the reference pads with to reach a minimum length; no topic or key uses them.
_PADDING_TEXT = ("many people enjoy learning about this subject because it offers something new every day and rewards "
                 "careful attention over time with lasting interest so readers often return to it with fresh questions "
                 "and share what they find with friends")
PADDING = tuple(_PADDING_TEXT.split())
_OPENINGS = ("Write a short text about {name}.", "Describe {name}.", "Tell me about {name}.", "Explain what makes {name} worth knowing.")


@dataclass(frozen=True)
class Topic:
    keyword: str  # a reply addresses the request when it uses this word
    related: tuple[str, ...]  # the words include / forbid rules and the reference draw from

    @property
    def name(self) -> str:
        return f"the {self.keyword}"


TRAIN_TOPICS = (
    Topic("ocean", ("waves", "salt", "tide", "coral", "whales", "currents", "shore", "depth")),
    Topic("volcano", ("lava", "ash", "magma", "crater", "eruption", "heat", "smoke", "rock")),
    Topic("bicycle", ("wheels", "pedals", "chain", "brakes", "helmet", "saddle", "gears", "road")),
    Topic("garden", ("seeds", "soil", "flowers", "weeds", "sunlight", "compost", "roses", "shovel")),
    Topic("library", ("books", "shelves", "reading", "pages", "librarian", "silence", "catalog", "loans")),
    Topic("coffee", ("beans", "roast", "aroma", "cup", "caffeine", "espresso", "grinder", "milk")),
    Topic("winter", ("snow", "frost", "ice", "scarf", "sledding", "fireplace", "boots", "cold")),
    Topic("train", ("rails", "station", "tickets", "engine", "carriage", "platform", "journey", "conductor")),
    Topic("bread", ("flour", "yeast", "oven", "crust", "dough", "bakery", "butter", "loaf")),
    Topic("moon", ("orbit", "craters", "tides", "night", "phases", "eclipse", "astronauts", "glow")),
    Topic("chessboard", ("knight", "bishop", "pawn", "squares", "checkmate", "opening", "castle", "queen")),
    Topic("desert", ("sand", "dunes", "cactus", "camels", "oasis", "mirage", "dry", "scorpions")),
)
HELD_OUT_TOPICS = (
    Topic("rainforest", ("canopy", "rain", "frogs", "vines", "humidity", "orchids", "jaguars", "river")),
    Topic("lighthouse", ("beacon", "keeper", "fog", "rocks", "lens", "ships", "coast", "storm")),
    Topic("piano", ("keys", "chords", "pedal", "melody", "hammers", "tuning", "scales", "concert")),
    Topic("honey", ("bees", "hive", "nectar", "wax", "sweet", "jar", "pollen", "comb")),
)


@dataclass(frozen=True)
class InstructionTask:
    seed: int
    topic: Topic
    request: str
    rules: tuple[Rule, ...]
    reference: str


def generate(seed: int, min_rules: int = 1, max_rules: int = 4, held_out_topics: bool = True,
             slots: tuple[str, ...] = SLOTS) -> InstructionTask:
    rng = random.Random(f"instructions:{seed}")
    topic = rng.choice(HELD_OUT_TOPICS if held_out_topics and seed >= HELD_OUT_BASE else TRAIN_TOPICS)
    allowed = [slot for slot in SLOTS if slot in slots]   # in SLOTS' order, so all slots draw as they always did
    if not min_rules <= len(allowed):
        raise ValueError(f"min_rules {min_rules} is more than the {len(allowed)} slot(s) {allowed} allow")
    picked = set(rng.sample(allowed, rng.randint(min_rules, min(max_rules, len(allowed)))))
    rules = _draw_rules(rng, topic, picked)
    reference = reference_reply(topic, rules)
    rng.shuffle(rules)  # the order the request lists the rules in carries no meaning
    request = rng.choice(_OPENINGS).format(name=topic.name) + "\nFollow these rules:\n" + "\n".join(f"- {r.instruction()}" for r in rules)
    return InstructionTask(seed, topic, request, tuple(rules), reference)


def _draw_rules(rng: random.Random, topic: Topic, slots: set[str]) -> list[Rule]:
    # Slots are visited in a fixed order: the case comes before the format (JSON keys follow it)
    # and the forbidden word before the required ones (they must differ).
    rules: list[Rule] = []
    upper, forbidden = False, ()
    if "case" in slots:
        upper = rng.random() < 0.5
        rules.append(Rule("uppercase" if upper else "lowercase"))
    if "forbid" in slots:
        forbidden = (rng.choice(topic.related),)
        rules.append(Rule("forbid_word", forbidden))
    if "include" in slots:
        allowed = [w for w in topic.related if w not in forbidden]
        rules.append(Rule("include_words", tuple(rng.sample(allowed, rng.randint(1, 2)))))
    if "length" in slots:
        rules.append(Rule("max_words", count=rng.randint(25, 60)) if rng.random() < 0.5 else Rule("min_words", count=rng.randint(12, 30)))
    if "format" in slots:
        if rng.random() < 0.5:
            rules.append(Rule("numbered_list", count=rng.randint(3, 5)))
        else:
            keys = rng.sample(JSON_KEYS, rng.randint(2, 3))
            rules.append(Rule("json_keys", tuple(k.upper() if upper else k for k in keys)))
    return rules


def reference_reply(topic: Topic, rules: list[Rule], pad_to: int = 0, exact: bool = False) -> str:
    """A reply that satisfies every rule: the required words first, then other topic words, one
    slot (sentence, list item or JSON value) at a time, padded to a minimum length (module
    docstring: `pad_to`, `exact`)."""
    by_kind = {r.kind: r for r in rules}
    required = [topic.keyword, *by_kind.get("include_words", Rule("include_words")).words]
    avoid = set(by_kind.get("forbid_word", Rule("forbid_word")).words) | set(required)
    pool = required + [w for w in topic.related if w not in avoid]
    shape = by_kind.get("numbered_list") or by_kind.get("json_keys")
    n_slots = 1 if shape is None else shape.count or len(shape.words)
    pieces: list[list[str]] = [[] for _ in range(n_slots)]
    for i, word in enumerate(pool[:max(n_slots, len(required))]):
        pieces[i % n_slots].append(word)
    text = _render(pieces, shape)
    bound = by_kind.get("min_words") or by_kind.get("max_words")
    target = 0 if bound is None else bound.count if exact else max(pad_to, bound.count) if bound.kind == "min_words" else 0
    padding = itertools.cycle(PADDING)
    while len(words(text)) < target:
        pieces[-1].append(next(padding))
        text = _render(pieces, shape)
    if "uppercase" in by_kind:
        return text.upper()
    return text.lower() if "lowercase" in by_kind else text


def _render(pieces: list[list[str]], shape: Rule | None) -> str:
    sentences = [" ".join(p)[:1].upper() + " ".join(p)[1:] + "." for p in pieces]
    if shape is None:
        return sentences[0]
    if shape.kind == "numbered_list":
        return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    return json.dumps(dict(zip(shape.words, sentences)))
