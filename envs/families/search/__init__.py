"""The search family: multi-hop questions over a generated corpus with a BM25 index."""

from kpop.envs.families.search.env import SearchEnv

__all__ = ["SearchEnv"]
