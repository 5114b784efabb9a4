"""`sandbox:` reaches every environment worker: a worker actor started the way `kpop run` starts it
(the RunSpec's runtime configuration, kpop.runtime.build, through kpop.runtime.actors) runs the
coding family's executions under the spec's sandbox limits.

A scripted policy (a fixed engine standing in for the model) plays one coding episode: it calls
`run_python` on a program that sleeps 3 s, then submits the problem's reference solution behind the
same 3 s sleep. With `sandbox.limits.wall_s: 1` the tool call reports a timeout and the submission
fails its hidden tests; with the default limits neither times out and the submission passes.
"""

from __future__ import annotations

import json

import pytest

from kpop.envs.families.coding.generated import make_problem
from kpop.rollout.agent_loop import Episode
from kpop.rollout.engine import SamplingParams
from kpop.runtime import runtime_config
from kpop.runtime.actors import start_worker
from kpop.spec import load_spec
from kpop.spec.resolve import check_run

SEED = 1  # an odd seed: a generated problem, as `source: generated` also asks
SLEEP = "import time\ntime.sleep(3)\n"
# the tiny tokenizer splits code finely; the spec's context must hold the episode (kpop run checks it)
TOKENS = ["rollout.max_total_tokens=16384", "rollout.sampling.max_new_tokens=4096", "model.max_position_embeddings=16384"]


def scripted_engine(turns: list[list[int]]):
    """An in-process engine that answers its i-th request with the token ids `turns[i]`. Defined
    here, so Ray ships the class by value into the worker actor along with the call."""
    from kpop.rollout.engine import GenerationResult

    class ScriptedEngine:
        def __init__(self) -> None:
            self.calls = 0

        async def generate(self, request):
            ids = turns[min(self.calls, len(turns) - 1)]
            self.calls += 1
            return GenerationResult(request.request_id, ids, [-0.1] * len(ids), [0] * len(ids), "stop")

    return ScriptedEngine()


def coding_episode(ray_session, model_dir, tokenizer, overrides: list[str]):
    spec = load_spec(None, ["envs.0.name=coding", "envs.0.options={source: generated}", *TOKENS, *overrides])
    check_run(spec, "test")                                  # what `kpop run` checks before it starts
    worker = start_worker(runtime_config(spec, model_dir).workers[0])
    reference = make_problem(SEED).reference
    texts = ['<tool_call>' + json.dumps({"name": "run_python", "arguments": {"code": SLEEP + "print('awake')"}}) + '</tool_call>',
             f"```python\n{SLEEP}{reference}```"]
    turns = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    try:
        traj = ray_session.get(worker.rollout.remote(Episode("coding", SEED, "g"), scripted_engine(turns),
                                                     SamplingParams(temperature=0.0, max_tokens=4096)), timeout=600)
    finally:
        ray_session.kill(worker)
    return traj, tokenizer.decode(traj.token_ids)


@pytest.mark.parametrize(("overrides", "timed_out"), [(["sandbox.limits.wall_s=1"], True), ([], False)],
                         ids=["wall_s=1", "default limits"])
def test_the_spec_sandbox_limits_bound_every_coding_execution(ray_session, tiny_llama_dir, tiny_tokenizer,
                                                              overrides, timed_out):
    traj, text = coding_episode(ray_session, tiny_llama_dir, tiny_tokenizer, overrides)
    assert traj.num_turns == 2 and traj.finish_reason == "terminated"
    # the run_python observation (its JSON result, as the model reads it back)
    assert ('"status": "timeout"' in text) == timed_out and ('"stdout": "awake' in text) == (not timed_out)
    assert traj.reward_parts["tests"] == (0.0 if timed_out else 1.0) and traj.reward == traj.reward_parts["tests"]
