"""The hybrid Lightning-Attention / MLA causal LM in the `bailing_hybrid` (BailingMoeV2_5) format.

Importing this package registers the config and model with transformers' Auto classes.
"""

from kpop.models.hybrid.configuration import BailingMoeV2_5Config
from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM, BailingMoeV2_5Model
from kpop.models.hybrid.registration import register_with_transformers

register_with_transformers()

__all__ = ["BailingMoeV2_5Config", "BailingMoeV2_5ForCausalLM", "BailingMoeV2_5Model", "register_with_transformers"]
