"""Format penalty (Evo-CoT): a fixed negative reward when forbidden tags appear, e.g. `<think>` in
instant-response mode. Returns 0.0 or `-penalty`; matching is case-insensitive and catches both
opening and closing tags."""

from __future__ import annotations

import re
from collections.abc import Iterable


def format_penalty(text: str, forbidden_tags: Iterable[str] = ("think",), penalty: float = 0.5) -> float:
    for tag in forbidden_tags:
        if re.search(rf"</?\s*{re.escape(tag)}\b[^>]*>", text, flags=re.IGNORECASE):
            return -abs(penalty)
    return 0.0
