"""The hybrid Lightning-Attention / MLA model, its kernels and formats, and small local model builders."""
