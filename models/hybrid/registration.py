"""Registers `bailing_hybrid` with transformers' Auto classes (idempotent; done on import of kpop.models.hybrid).

After `import kpop.models.hybrid`, `AutoConfig.from_pretrained(dir)` and
`AutoModelForCausalLM.from_pretrained(dir)` build KPop's classes for any `bailing_hybrid` checkpoint.
"""

from __future__ import annotations


def register_with_transformers() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from kpop.models.hybrid.configuration import BailingMoeV2_5Config
    from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM, BailingMoeV2_5Model

    AutoConfig.register("bailing_hybrid", BailingMoeV2_5Config, exist_ok=True)
    AutoModel.register(BailingMoeV2_5Config, BailingMoeV2_5Model, exist_ok=True)
    AutoModelForCausalLM.register(BailingMoeV2_5Config, BailingMoeV2_5ForCausalLM, exist_ok=True)
