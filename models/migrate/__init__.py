"""Architectural migration of a GQA (Llama / Qwen2 style) checkpoint into the hybrid Lightning/MLA layout."""
