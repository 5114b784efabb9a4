"""A real BM25 index (bm25s) over a world's corpus, built once per process and world seed.

The index is a module-level cache, not an attribute of the environment, so environments stay small
to pickle and a worker process rebuilds the index on first use (about a tenth of a second).
Queries with no indexed word return no hits rather than arbitrary zero-score documents.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

from kpop.envs.families.search.world import Doc, World, build_world

_LOCK = threading.Lock()


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    score: float
    snippet: str


class CorpusIndex:
    def __init__(self, world: World) -> None:
        import bm25s

        self.world = world
        self.docs: list[Doc] = list(world.docs.values())
        self.retriever = bm25s.BM25()
        tokens = bm25s.tokenize([f"{d.title}. {d.text}" for d in self.docs], stopwords="en", show_progress=False)
        self.retriever.index(tokens, show_progress=False)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        import bm25s

        words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        if not words or not words[0]:
            return []
        k = max(1, min(k, len(self.docs)))
        with _LOCK:  # bm25s keeps scratch state on the retriever
            found, scores = self.retriever.retrieve(words, k=k, show_progress=False, n_threads=1)
        hits = []
        for index, score in zip(found[0], scores[0]):
            if score > 0:
                doc = self.docs[int(index)]
                hits.append(Hit(doc.doc_id, doc.title, round(float(score), 4), doc.text[:120]))
        return hits

    def open(self, doc_id: str) -> Doc | None:
        return self.world.docs.get(doc_id)


@lru_cache(maxsize=4)
def corpus_index(seed: int) -> CorpusIndex:
    return CorpusIndex(build_world(seed))
