"""`search`: multi-hop questions over a generated corpus with `search(query)` and `open(doc_id)` tools.

The corpus (envs/families/search/world.py) is fixed by the `corpus_seed` option; the task seed picks
the question. The tools run over a real BM25 index. The final turn (no tool call) is the answer,
optionally after `Answer:`; the reward is token F1 against the gold answer (or exact match with
`metric: em`), and both are reported in the reward parts. The reference solver searches for each
entity of the question's chain, opens the proving documents in order, then answers.

Difficulty options: `min_hops`/`max_hops` (documents in the question's chain; 1 adds single-fact
questions about a person or a company), `search_k` (hits a search returns unless the call sets `k`:
the distractors around the proving document) and `open_tool` (without it, only `search` is
offered and each hit carries its document's whole text, so the solver answers from the hits).
`reference_search_rate` is the share of tasks on which the reference solver searches; on the
others it answers at once, correctly (it knows the world), which a model cannot imitate: cold-start
data with a low rate teaches a plausible but worse habit, answering without looking, that RL can
unlearn from reward.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.families.search.index import corpus_index
from kpop.envs.families.search.metrics import exact_match, extract_answer, f1_score
from kpop.envs.families.search.world import make_question
from kpop.envs.registry import register_env
from kpop.envs.tool_env import Episode, ToolEnv, Verdict, tool_call_text
from kpop.envs.tools import Tool, ToolError, params

SYSTEM = ("Answer the question using the search and open tools over the document collection. "
          "Questions need several documents. When you know the answer, reply with: Answer: <answer>")
SYSTEM_SEARCH_ONLY = "Answer the question using the search tool. When you know the answer, reply with: Answer: <answer>"


@register_env("search")
class SearchEnv(ToolEnv):
    family = "search"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        corpus_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the generated world and corpus.")
        metric: Literal["f1", "em"] = Field("f1", description="Reward metric: token F1 or exact match.")
        max_turns: int = Field(12, ge=2, le=64, description="Model turns before truncation.")
        min_hops: int = Field(2, ge=1, le=3, description="Fewest documents in a question's chain (1: single-fact questions).")
        max_hops: int = Field(3, ge=1, le=3, description="Most documents in a question's chain.")
        search_k: int = Field(5, ge=1, le=10, description="Hits a search returns when the call does not set k (the proving document's distractors).")
        open_tool: bool = Field(True, description="Offer the open tool; without it, search hits carry their document's whole text.")
        reference_search_rate: float = Field(1.0, ge=0.0, le=1.0, description="Share of tasks on which the reference solver searches; on the others it answers at once, correctly, without looking.")

    def __init__(self, corpus_seed: int = 0, metric: str = "f1", max_turns: int = 12, min_hops: int = 2, max_hops: int = 3,
                 search_k: int = 5, open_tool: bool = True, reference_search_rate: float = 1.0) -> None:
        super().__init__(max_turns=max_turns)
        if min_hops > max_hops:
            raise ValueError(f"min_hops {min_hops} is larger than max_hops {max_hops}")
        self.corpus_seed, self.metric = corpus_seed, metric
        self.min_hops, self.max_hops, self.search_k, self.open_tool = min_hops, max_hops, search_k, open_tool
        self.reference_search_rate = reference_search_rate

    @property
    def index(self):
        return corpus_index(self.corpus_seed)

    def build(self, seed: int, rng: random.Random) -> Episode:
        question = make_question(self.index.world, rng, self.min_hops, self.max_hops)
        plan = []
        # its own stream, so the rate leaves each seed's question unchanged
        if random.Random(f"search-reference:{seed}").random() < self.reference_search_rate:
            for query, doc_id in zip(question.queries, question.hops):
                plan.append(tool_call_text("search", {"query": query}))
                if self.open_tool:
                    plan.append(tool_call_text("open", {"doc_id": doc_id}))
        plan.append(f"Answer: {question.answer}")
        system = SYSTEM if self.open_tool else SYSTEM_SEARCH_ONLY
        return Episode(f"search-{self.corpus_seed}-{seed}", system, question.text, plan, facts={"answer": question.answer, "hops": question.hops})

    def tools(self) -> list[Tool]:
        search = Tool("search", "BM25 search over the document collection; returns the best matching documents.",
                      params(["query"], query={"type": "string", "maxLength": 512}, k={"type": "integer", "description": f"hits, 1-10 (default {self.search_k})"}),
                      self._search)
        if not self.open_tool:
            return [search]
        return [search, Tool("open", "Read a whole document by its doc_id (from search results).", params(doc_id={"type": "string", "maxLength": 256}), self._open)]

    def _search(self, query: str, k: int | None = None) -> list[dict]:
        k = self.search_k if k is None else k
        if not 1 <= k <= 10:
            raise ToolError("k must be between 1 and 10")
        hits = self.index.search(query, k)
        if not hits:
            raise ToolError("no document matches this query; try other words")
        if not self.open_tool:
            return [{"doc_id": h.doc_id, "text": self.index.open(h.doc_id).text} for h in hits]
        return [{"doc_id": h.doc_id, "title": h.title, "score": h.score, "snippet": h.snippet} for h in hits]

    def _open(self, doc_id: str) -> dict:
        doc = self.index.open(doc_id)
        if doc is None:
            raise ToolError(f"no document with doc_id {doc_id[:64]!r}; use an id from the search results")
        return {"doc_id": doc.doc_id, "title": doc.title, "text": doc.text}

    async def verify(self, answer: str) -> Verdict:
        gold = self.episode.facts["answer"]
        guess = extract_answer(answer)
        em, f1 = exact_match(guess, gold), f1_score(guess, gold)
        return Verdict(em if self.metric == "em" else f1, {"em": em, "f1": f1}, {"expected": gold, "answer": guess[:200]})
