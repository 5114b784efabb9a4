"""LearnerGroup: several data-parallel Learner ranks (Ray actors) behind the Learner's interface.

`LearnerGroup.create(model_dir, spec, seed, sft_lr, num_threads)` returns a handle to a
coordinator actor (0 CPUs) with the methods of `LearnerActor`: ready, train_step, publish, save,
load, close, returning the same types. The coordinator owns `spec.num_ranks` rank actors (each
`spec.num_cpus` / `spec.num_gpus`); killing it ends them (Ray fate-sharing).

Per step: the batch-level plan is made once here (plan.py: advantages over whole groups,
shortest-correct selection, preference pairs, global token/pair normalisers), split contiguously
over the ranks with a common micro-batch count, and every rank runs `train_plan` on its shard;
DeepSpeed reduces the gradients (rank r's loss carries the factor world_size, undoing DeepSpeed's
average, so the update equals one rank's on the whole batch). Metrics: losses, token counts,
mismatch / clipped / masked fractions and the MTP loss (each already divided by the global count)
are summed over ranks; the MoE load is rank 0's (every rank sums the routers' counts over all ranks). `publish` and `save` are collective (ZeRO-3 shards gathered); rank 0's WeightUpdate is
returned. The rendezvous is rank 0's node address and a free port there; gloo on CPU, NCCL on GPU.

Placement: `labels` (cluster.placement.learner) restrict the coordinator and every rank to nodes
with those labels; the ranks must all be running within `place_timeout_s`, else the coordinator's
construction raises TimeoutError naming what they ask for (the ranks are not built meanwhile).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kpop.learner.deepspeed_engine import RankInfo, free_port
from kpop.learner.learner import Learner, StepMetrics
from kpop.learner.objectives.preference import FocusState
from kpop.learner.plan import StepPlan, plan_step, shard
from kpop.rollout.engine import WeightUpdate
from kpop.spec.learner import LearnerSpec
from kpop.trajectory import Trajectory


class RankWorker:
    """One rank: reports its rendezvous address, then hosts a Learner."""

    def __init__(self) -> None:
        self.learner: Learner | None = None

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def build(self, model_dir: str, spec: LearnerSpec, seed: int, rank: RankInfo, sft_lr: float | None,
              num_threads: int | None, rl_threads: int | None = None) -> int:
        self.learner = Learner(model_dir, spec, seed, rank, sft_lr=sft_lr, num_threads=num_threads,
                               rl_threads=rl_threads)
        return self.learner.version

    def ready(self) -> int:
        return self.learner.ready()

    def train_plan(self, plan: StepPlan) -> StepMetrics:
        return self.learner.train_plan(plan)

    def publish(self) -> WeightUpdate:
        return self.learner.publish()

    def save(self, directory: str) -> Path:
        return self.learner.save(directory)

    def load(self, directory: str) -> int:
        return self.learner.load(directory)

    def focus_state(self) -> FocusState:
        return self.learner.focus_state()

    def reset_reference(self) -> int:
        return self.learner.reset_reference()

    def set_sft_lr(self, lr: float) -> float:
        return self.learner.set_sft_lr(lr)

    def close(self) -> None:
        self.learner.close()


def combine(metrics: list[StepMetrics]) -> StepMetrics:
    def total(name: str) -> float:
        return sum(getattr(m, name) for m in metrics)

    m0 = metrics[0]
    return StepMetrics(m0.mode, m0.version, total("loss"), m0.grad_norm, int(total("tokens")),
                       int(total("sequences")), total("mismatch"), total("clipped_fraction"),
                       max(m.step_s for m in metrics), total("masked_fraction"), total("pair_accuracy"),
                       int(total("pairs")), moe_load=m0.moe_load,  # the same on every rank (counts are summed over ranks)
                       mtp={k: sum(m.mtp[k] for m in metrics) for k in m0.mtp},  # each rank's share of the batch mean
                       quant={k: sum(m.quant[k] for m in metrics) for k in m0.quant},  # each rank runs its own GEMMs
                       env_nll=_sum_dicts(m.env_nll for m in metrics), env_tokens=_sum_dicts(m.env_tokens for m in metrics))


def _sum_dicts(dicts) -> dict:
    total: Counter = Counter()
    for d in dicts:
        total.update(d)     # adds values (Counter's `+` would drop zeros)
    return dict(total)


class LearnerGroup:
    def __init__(self, model_dir: str, spec: LearnerSpec, seed: int = 0, sft_lr: float | None = None,
                 num_threads: int | None = None, rl_threads: int | None = None, labels: dict | None = None,
                 place_timeout_s: float | None = None) -> None:
        import ray

        worker = ray.remote(RankWorker)
        n = spec.num_ranks
        self.spec, self.focus = spec, FocusState()
        where = {"label_selector": dict(labels)} if labels else {}
        self.ranks = [worker.options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, **where).remote() for _ in range(n)]
        addresses = [w.address.remote() for w in self.ranks]
        _, waiting = ray.wait(addresses, num_returns=n, timeout=place_timeout_s)
        self.start_error: TimeoutError | None = None
        if waiting:
            # Raised by ready() rather than here: a constructor that raises leaves callers of the
            # actor waiting (seen with Ray 2.x), a method that raises reaches them at once.
            for w in self.ranks:
                ray.kill(w)
            self.start_error = TimeoutError(f"{len(waiting)} of {n} learner ranks (each CPU {spec.num_cpus:g}, GPU {spec.num_gpus:g}"
                               f"{f', labels {labels}' if labels else ''}) not placed within {place_timeout_s:g} s "
                               "(cluster.start_timeout_s): the cluster has no node with that much free "
                               "(learner.num_cpus, learner.num_gpus, cluster.placement.learner), or the ranks' "
                               "processes are still starting on a loaded node (raise cluster.start_timeout_s)")
            return
        addr, port = ray.get(addresses[0])
        ray.get([w.build.remote(str(model_dir), spec, seed, RankInfo(r, n, addr, port), sft_lr, num_threads,
                              rl_threads)
                 for r, w in enumerate(self.ranks)])

    @classmethod
    def create(cls, model_dir: str, spec: LearnerSpec, seed: int = 0, sft_lr: float | None = None,
               num_threads: int | None = None, rl_threads: int | None = None, labels: dict | None = None,
               place_timeout_s: float | None = None):
        """A coordinator actor (0 CPUs) owning the ranks; its methods mirror LearnerActor's."""
        import ray

        where = {"label_selector": dict(labels)} if labels else {}
        return ray.remote(cls).options(num_cpus=0, **where).remote(model_dir, spec, seed, sft_lr, num_threads, rl_threads,
                                                                  labels, place_timeout_s)

    def _all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in self.ranks])

    def ready(self) -> int:
        """The policy version once every rank is built (rank 0's); raises the placement timeout."""
        if self.start_error is not None:
            raise self.start_error
        return self._all("ready")[0]

    def train_step(self, trajectories: list[Trajectory], mode: str) -> StepMetrics:
        import ray

        plan = plan_step(trajectories, mode, self.spec, self.focus)
        self.focus = plan.focus
        shards = shard(plan, len(self.ranks), self.spec.micro_batch_size)
        return combine(ray.get([w.train_plan.remote(s) for w, s in zip(self.ranks, shards)]))

    def publish(self) -> WeightUpdate:
        return self._all("publish")[0]

    def reset_reference(self) -> int:
        """Every rank's current weights become its DPO reference (a preference round's start)."""
        return self._all("reset_reference")[0]

    def set_sft_lr(self, lr: float) -> float:
        """Every rank's "sft" learning rate becomes `lr` (a cold-start phase's own rate); returns the old one."""
        return self._all("set_sft_lr", lr)[0]

    def save(self, directory: str | Path) -> Path:
        return self._all("save", str(directory))[0]

    def load(self, directory: str | Path) -> int:
        version = self._all("load", str(directory))[0]
        self.focus = self._all("focus_state")[0]
        return version

    def close(self) -> None:
        import ray

        self._all("close")
        for w in self.ranks:
            ray.kill(w)
        self.ranks = []
