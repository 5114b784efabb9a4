"""A recipe in words and as plain data: which GEMMs and operands are quantised, how, and which
layers stay in high precision (what `kpop run --dry-run` prints and the run directory records).

`recipe_dict(recipe)`: per GEMM (fprop, dgrad, wgrad) its RHT size and, per operand (x, w, dy),
the grid, rounding, block shape and scale kind, or "high precision". `recipe_lines(recipe,
report)`: the same in a few lines of text, with the layer split `apply` makes (ApplyReport).
"""

from __future__ import annotations

import re

from kpop.quant.apply import ApplyReport
from kpop.quant.recipe import GEMMS, OPERAND_NAMES, OperandSpec, Recipe


def _operand(spec: OperandSpec) -> dict | str:
    if not spec.quantised:
        return "high precision"
    block = "x".join(str(b) for b in spec.fmt.block)
    return {"grid": spec.grid, "rounding": spec.rounding, "block": block, "scale": spec.fmt.scale}


def recipe_dict(recipe: Recipe) -> dict:
    out: dict = {"recipe": recipe.name, "gemms": {}}
    for name in GEMMS:
        gemm = recipe.gemm(name)
        lhs, rhs = OPERAND_NAMES[name]
        out["gemms"][name] = {lhs: _operand(gemm.lhs), rhs: _operand(gemm.rhs), "rht": gemm.rht}
    hp = recipe.high_precision
    out["high_precision"] = {"first_blocks": hp.first_blocks, "last_blocks": hp.last_blocks, "patterns": list(hp.patterns)}
    return out


def _operand_text(name: str, spec: dict | str) -> str:
    if isinstance(spec, str):
        return f"{name} {spec}"
    return f"{name} {spec['grid']} {spec['block']} {spec['scale']} {spec['rounding']}"


def recipe_lines(recipe: Recipe, report: ApplyReport | None = None) -> list[str]:
    if not recipe.enabled:
        return [f"{recipe.name}: no GEMM quantised"]
    lines = [f"{recipe.name}:"]
    for name, gemm in recipe_dict(recipe)["gemms"].items():
        operands = ", ".join(_operand_text(k, v) for k, v in gemm.items() if k != "rht")
        lines.append(f"  {name}: {operands}; RHT {gemm['rht'] or 'off'}")
    if report is not None:
        total = len(report.quantised) + len(report.kept)
        lines.append(f"  {len(report.quantised)} of {total} linear layers quantised; kept in high precision: "
                     f"{_grouped(report.kept)}")
    return lines


def _grouped(names: list[str]) -> str:
    """Names collapsed by block: `model.layers.0.* (7)` for the linears of one block."""
    groups: dict[str, int] = {}
    for name in names:
        found = re.match(r"(.*?\.\d+)\.", name)
        key = f"{found.group(1)}.*" if found else name
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" if k.endswith("*") else k for k, n in groups.items()) or "none"
