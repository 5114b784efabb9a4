"""Building blocks of the hybrid model: norms, RoPE, SwiGLU, MoE, Lightning Attention and MLA layers."""
