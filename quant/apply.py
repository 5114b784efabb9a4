"""`apply(model, recipe)`: replace a model's nn.Linear layers by FP4Linear, in place.

High-precision layers (left as nn.Linear):
- every linear inside the first `first_blocks` and the last `last_blocks` transformer blocks,
  where "the blocks" are the children of the model's outermost nn.ModuleList (the fewest dots
  in its name, the longest among equals: Llama's and the hybrid's `model.layers`, not an MoE
  layer's `experts` inside them); a model without a ModuleList has no blocks to keep;
- every linear whose qualified name matches a `patterns` entry (default "*lm_head*").
Linears outside the blocks (and not matched) are quantised. Replacements share the original
Parameter objects, so state_dict keys, optimiser state and tied weights are unaffected.
A recipe that quantises nothing (bf16) replaces nothing. Apply once per model: layers that are
already FP4Linear are not nn.Linear and are left as they are.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from kpop.quant.linear import FP4Linear
from kpop.quant.recipe import Recipe, make_recipe


@dataclass
class ApplyReport:
    recipe: str
    quantised: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _block_list(model: nn.Module) -> tuple[str, int] | None:
    lists = [(name, len(m)) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return None
    return min(lists, key=lambda item: (item[0].count("."), -item[1]))


def _kept_blocks(blocks: tuple[str, int] | None, first: int, last: int) -> set[str]:
    if blocks is None:
        return set()
    prefix, n = blocks
    keep = set(range(min(first, n))) | set(range(max(n - last, 0), n))
    return {f"{prefix}.{i}." if prefix else f"{i}." for i in keep}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def classify(model: nn.Module, recipe: Recipe) -> ApplyReport:
    """Which nn.Linear layers `apply` would quantise and which it would keep; changes nothing
    (works on a model built on the meta device, e.g. to show a run's plan)."""
    report = ApplyReport(recipe.name)
    hp = recipe.high_precision
    kept_prefixes = _kept_blocks(_block_list(model), hp.first_blocks, hp.last_blocks)
    # Exact type: subclasses (FP4Linear from an earlier apply, other custom layers) are left alone.
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        in_kept_block = any(name.startswith(p) for p in kept_prefixes)
        matched = any(fnmatch.fnmatch(name, pat) for pat in hp.patterns)
        (report.kept if not recipe.enabled or in_kept_block or matched else report.quantised).append(name)
    return report


def apply(model: nn.Module, recipe: Recipe) -> ApplyReport:
    """Swap eligible nn.Linear layers of `model` for FP4Linear(recipe); returns what was done."""
    report = classify(model, recipe)
    for name in report.quantised:
        _set_submodule(model, name, FP4Linear.from_linear(model.get_submodule(name), recipe))
    return report


def recipe_from_spec(spec) -> Recipe:
    """The recipe a `kpop.spec.learner.QuantSpec` describes."""
    return make_recipe(
        spec.recipe,
        first_blocks=spec.keep_first_blocks,
        last_blocks=spec.keep_last_blocks,
        keep_lm_head=spec.keep_lm_head,
        rht_size=spec.rht_size,
    )


def apply_spec(model: nn.Module, spec) -> ApplyReport:
    """Apply the recipe described by a `kpop.spec.learner.QuantSpec` (the learner's entry point)."""
    return apply(model, recipe_from_spec(spec))
