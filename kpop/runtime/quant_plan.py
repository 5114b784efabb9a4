"""The FP4 recipe a run's learner trains with, resolved against the run's model: which GEMMs and
operands are quantised and which linear layers stay in high precision.

`quant_plan(spec, model_dir)` builds the model's skeleton on the meta device (no memory, no
weights: from `model_dir`'s or `model.path`'s config.json, else the fresh model's sizes) and
classifies its layers with the learner's own rule (kpop.quant.apply.classify), so the plan is what
the learner's `apply_spec` does. `kpop run --dry-run` prints it (`plan_lines`); a run records it
as `<run_dir>/quant.json` (`record`). A run with `learner.quant.recipe: bf16` has no plan.
Checkpoints stay in high precision either way: FP4Linear keeps the nn.Linear parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

from kpop.spec import RunSpec

RECORD = "quant.json"


def _skeleton(spec: RunSpec, model_dir: str | Path | None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import kpop.models.hybrid  # noqa: F401 (registers bailing_hybrid with the Auto classes)

    folder = next((Path(f) for f in (model_dir, spec.model.path)
                   if f is not None and (Path(f) / "config.json").is_file()), None)
    if folder is not None:
        config = AutoConfig.from_pretrained(str(folder))
    elif spec.model.type == "hybrid":
        from kpop.models.hybrid.presets import config_from_spec

        config = config_from_spec(spec.model)
    else:
        from kpop.models.tiny_llama import llama_config

        config = llama_config(spec.model, _Vocab(spec.tokenizer.vocab_size))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


class _Vocab:
    """Stands in for the tokenizer a fresh Llama is sized to (layer names do not depend on it)."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def quant_plan(spec: RunSpec, model_dir: str | Path | None = None) -> dict | None:
    from kpop.quant.apply import classify, recipe_from_spec
    from kpop.quant.describe import recipe_dict

    if spec.learner.quant.recipe == "bf16":
        return None
    recipe = recipe_from_spec(spec.learner.quant)
    report = classify(_skeleton(spec, model_dir), recipe)
    return {**recipe_dict(recipe), "quantised": report.quantised, "kept": report.kept}


def plan_lines(spec: RunSpec) -> list[str]:
    from kpop.quant.apply import ApplyReport, recipe_from_spec
    from kpop.quant.describe import recipe_lines

    plan = quant_plan(spec)
    if plan is None:
        return ["off (learner.quant.recipe bf16)"]
    return recipe_lines(recipe_from_spec(spec.learner.quant), ApplyReport(plan["recipe"], plan["quantised"], plan["kept"]))


def record(spec: RunSpec, model_dir: str | Path, run_dir: str | Path) -> Path | None:
    plan = quant_plan(spec, model_dir)
    if plan is None:
        return None
    path = Path(run_dir) / RECORD
    path.write_text(json.dumps(plan, indent=1))
    return path
