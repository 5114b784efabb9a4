"""One data-parallel learner rank as a plain process (no Ray), for the group-equivalence test.

    python learner_rank_worker.py MODEL_DIR RANK WORLD PORT STAGE OUT_FILE
Runs the same three steps as tests/learner/test_learner_group.py on its shard of each batch and
writes {"metrics": [...], "state": rank 0's published weights} to OUT_FILE with torch.save.
"""

import importlib.util
import sys
from pathlib import Path


def main(model_dir: str, rank: int, world: int, port: int, stage: int, out: str) -> None:
    import torch

    from kpop.learner.deepspeed_engine import RankInfo
    from kpop.learner.learner import Learner
    from kpop.learner.plan import plan_step, shard
    from kpop.rollout.weight_sync import chunks_to_state_dict

    spec = importlib.util.spec_from_file_location("group_cases", Path(__file__).with_name("test_learner_group.py"))
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    cfg = cases.case(num_ranks=world, zero_stage=stage)
    learner = Learner(model_dir, cfg, seed=0, rank=RankInfo(rank, world, "127.0.0.1", port), num_threads=1)
    metrics = []
    for trajs, mode in cases.steps():
        plan = plan_step(trajs, mode, cfg, learner.focus)
        metrics.append(learner.train_plan(shard(plan, world, cfg.micro_batch_size)[rank]))
    update = learner.publish()
    torch.save({"metrics": metrics, "state": chunks_to_state_dict(update.chunks) if update.chunks else None}, out)
    learner.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5])
