"""Training objectives: small functions over per-token tensors, each with its formula."""
