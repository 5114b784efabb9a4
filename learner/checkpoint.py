"""Learner checkpoints: a servable Hugging Face folder plus everything needed for an exact resume.

Layout of a checkpoint folder:
    config.json, model.safetensors, tokenizer files   HF format, written by rank 0 (ZeRO-3 shards are
                                                     gathered first); `from_pretrained`/vLLM load it as is
                                                     (a hybrid model also gets its config module and
                                                     auto_map: the public bailing_hybrid layout)
    trainer_state/state/...                          DeepSpeed checkpoint: module, optimiser (each rank
                                                     its ZeRO partition) and the learner's client state
    rng/rank{r}.pt                                   torch, CUDA, numpy and python RNG states of rank r
    learner.json                                     version, step count, focus state, last step's mode, spec (for people)

Exact-resume invariant: `save(d)` then `load(d)` on a freshly built learner with the same spec and
world size restores parameters, optimiser moments, LR-schedule position (the step count), RNG and
the policy version, so the following steps give bit-identical losses (tested). Every rank must call
both functions (they are collective); the folder must be on storage all ranks see.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from kpop.faults import fault_point
from kpop.learner.objectives.preference import FocusState

STATE_DIR, TAG = "trainer_state", "state"


def rng_state() -> dict:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(learner, directory: str | Path) -> Path:
    """Collective over the learner's ranks; returns the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state_dict = learner.full_state_dict()          # collective under ZeRO-3; None off rank 0
    client = {"version": learner.version, "steps": learner.steps, "focus": asdict(learner.focus),
              "last_mode": learner.last_mode}
    if learner.rank.rank == 0:
        learner.engine.module.save_pretrained(str(out), state_dict=state_dict)
        if getattr(learner.engine.module.config, "model_type", None) == "bailing_hybrid":
            from kpop.models.hybrid.checkpoint import write_remote_code

            write_remote_code(out)  # stock vLLM reads the config without KPop
        learner.tokenizer.save_pretrained(str(out))
        spec = learner.spec.model_dump(mode="json")
        (out / "learner.json").write_text(json.dumps({**client, "spec": spec}, indent=2))
    fault_point(out, f"{out.name.removesuffix('.partial')}:weights_written")  # tests/faults: a kill mid-save
    learner.engine.save_checkpoint(str(out / STATE_DIR), tag=TAG, client_state=client)
    (out / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), out / "rng" / f"rank{learner.rank.rank}.pt")
    return out


def load_checkpoint(learner, directory: str | Path) -> int:
    """Restore module, optimiser, version, step count, focus and RNG; returns the version."""
    folder = Path(directory)
    path, client = learner.engine.load_checkpoint(str(folder / STATE_DIR), tag=TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"no learner state under {folder / STATE_DIR}")
    learner.version, learner.steps = int(client["version"]), int(client["steps"])
    learner.last_mode = client.get("last_mode")
    focus = client.get("focus") or {}
    learner.focus = FocusState(dict(focus.get("saturation", {})), int(focus.get("updates", 0)))
    set_rng_state(torch.load(folder / "rng" / f"rank{learner.rank.rank}.pt", weights_only=False))
    return learner.version
