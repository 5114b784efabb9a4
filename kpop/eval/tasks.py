"""Which held-out tasks an evaluation uses.

Contract: `held_out_tasks(envs, seed, names, n)` returns the run's first `n` held-out tasks
(`TaskSampler(envs, seed).held_out(n)`: same run seed, same env weights) that belong to the named
environments, in the run's order. With all of the run's environments and `n = train.eval_tasks`
these are exactly the tasks of the run's own before/after evaluation. An environment the run did
not train on gets `n` tasks from a sampler of its own. Held-out seeds never overlap training
seeds (kpop.tasks).

The run settings an evaluation inherits come from kpop.runtime.recorded.
"""

from __future__ import annotations

from kpop.rollout.agent_loop import Episode
from kpop.spec.envs import EnvEntrySpec
from kpop.tasks import TaskSampler


def held_out_tasks(envs: list[EnvEntrySpec], seed: int, names: list[str], n: int) -> list[Episode]:
    trained = {e.name for e in envs}
    out = [ep for ep in TaskSampler(envs, seed).held_out(n) if ep.env_name in names] if envs else []
    for name in names:
        if name not in trained:
            out.extend(TaskSampler([EnvEntrySpec(name=name)], seed).held_out(n))
    return out
