"""`search`: multi-hop questions over a generated corpus with `search(query)` and `open(doc_id)` tools.

The corpus (envs/families/search/world.py) is fixed by the `corpus_seed` option; the task seed picks
the question. The tools run over a real BM25 index. The final turn (no tool call) is the answer,
optionally after `Answer:`; the reward is token F1 against the gold answer (or exact match with
`metric: em`), and both are reported in the reward parts. The reference solver searches for each
entity of the question's chain, opens the proving documents in order, then answers.
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


@register_env("search")
class SearchEnv(ToolEnv):
    family = "search"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        corpus_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the generated world and corpus.")
        metric: Literal["f1", "em"] = Field("f1", description="Reward metric: token F1 or exact match.")
        max_turns: int = Field(12, ge=2, le=64, description="Model turns before truncation.")

    def __init__(self, corpus_seed: int = 0, metric: str = "f1", max_turns: int = 12) -> None:
        super().__init__(max_turns=max_turns)
        self.corpus_seed, self.metric = corpus_seed, metric

    @property
    def index(self):
        return corpus_index(self.corpus_seed)

    def build(self, seed: int, rng: random.Random) -> Episode:
        question = make_question(self.index.world, rng)
        plan = []
        for query, doc_id in zip(question.queries, question.hops):
            plan.append(tool_call_text("search", {"query": query}))
            plan.append(tool_call_text("open", {"doc_id": doc_id}))
        plan.append(f"Answer: {question.answer}")
        return Episode(f"search-{self.corpus_seed}-{seed}", SYSTEM, question.text, plan, facts={"answer": question.answer, "hops": question.hops})

    def tools(self) -> list[Tool]:
        return [
            Tool("search", "BM25 search over the document collection; returns the best matching documents.",
                 params(["query"], query={"type": "string", "maxLength": 512}, k={"type": "integer", "description": "hits, 1-10 (default 5)"}),
                 self._search),
            Tool("open", "Read a whole document by its doc_id (from search results).", params(doc_id={"type": "string", "maxLength": 256}), self._open),
        ]

    def _search(self, query: str, k: int = 5) -> list[dict]:
        if not 1 <= k <= 10:
            raise ToolError("k must be between 1 and 10")
        hits = self.index.search(query, k)
        if not hits:
            raise ToolError("no document matches this query; try other words")
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
