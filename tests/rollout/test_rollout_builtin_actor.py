"""BuiltinEngineActor over Ray: generate, stream, update and load cross the actor boundary intact."""

from __future__ import annotations

import pytest
import torch

from kpop.rollout.builtin.tiny_models import tiny_hybrid, tiny_hybrid_dir
from kpop.rollout.engine import GenerationRequest, SamplingParams, WeightUpdate
from kpop.rollout.weight_sync import WeightSyncError, state_dict_to_chunks

pytestmark = pytest.mark.slow


@torch.no_grad()
def argmax_decode(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_actor_generates_updates_and_rejects(ray_session, tmp_path):
    ray = ray_session
    from kpop.rollout.builtin_actor import BuiltinEngineActor
    from kpop.rollout.builtin_engine import BuiltinEngineConfig

    model_dir = tiny_hybrid_dir(tmp_path / "hybrid", seed=0)
    actor = BuiltinEngineActor.options(num_cpus=1).remote(BuiltinEngineConfig(model_dir=str(model_dir)), num_threads=1)
    try:
        assert ray.get(actor.start.remote()) > 0
        sp = SamplingParams(temperature=0, max_tokens=6)
        res = ray.get(actor.generate.remote(GenerationRequest("a", [1, 2, 3], sp)))
        assert res.token_ids == argmax_decode(tiny_hybrid(seed=0), [1, 2, 3], 6) and res.versions == [0] * 6
        new = tiny_hybrid(seed=1)
        ray.get(actor.update_weights.remote(WeightUpdate(3, state_dict_to_chunks(new.state_dict(), 64_000))))
        assert ray.get(actor.load.remote()).version == 3
        res = ray.get(actor.generate.remote(GenerationRequest("b", [1, 2, 3], sp)))
        assert res.token_ids == argmax_decode(new, [1, 2, 3], 6) and res.versions == [3] * 6
        with pytest.raises(WeightSyncError):
            ray.get(actor.update_weights.remote(WeightUpdate(4, state_dict_to_chunks({"x": torch.zeros(2)}, 64_000))))
        assert ray.get(actor.load.remote()).version == 3
    finally:
        ray.get(actor.close.remote())
        ray.kill(actor)
