"""The storage rule of a multi-node run, checked before any actor starts (deploy/cluster/README.md).

Every node of the cluster must see `run_dir` as the same folder at the same path, and the folder
the actors start from (`model_dir`: `<run_dir>/init`, a checkpoint being resumed, or model.path):
learner ranks write checkpoints there (rank 0 the weights and tokenizer, every rank its optimiser
partition), the driver adds the run and scheduler state and moves `last`, and engines and
environment workers, replacements included, load the starting folder's weights and tokenizer
from it. Weights published during the run travel by Ray (the learner's WeightUpdate), not by path.

`check_storage(run_dir, model_dir, nodes, timeout_s)` writes a random token under
`<run_dir>/.storage_check/`, runs one zero-CPU task pinned to every alive node that reads the token
and the starting folder's config.json and writes its own file next to the token, then checks that
the driver sees every node's file. A node with its own local folder at that path (the silent
failure: checkpoints split across machines) reads a different token. Failures raise
`ClusterStartError` naming the node and the path; the folder is removed either way.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from kpop.runtime.placement import ClusterStartError, NodeInfo

CHECK_DIR = ".storage_check"
README = "deploy/cluster/README.md (Storage)"


def _probe(folder: str, token: str, model_dir: str, node_id: str) -> str | None:
    """On one node: None when it sees the driver's token and the starting folder, else what is wrong."""
    probe = Path(folder)
    try:
        seen = (probe / "token").read_text()
    except OSError as exc:
        return f"cannot read {probe / 'token'} ({exc.__class__.__name__})"
    if seen != token:
        return f"{probe.parent} is a different folder there (another run's or a local one)"
    if not (Path(model_dir) / "config.json").is_file():
        return f"the starting model {model_dir} is not there (no config.json)"
    try:
        (probe / node_id).write_text(token)
    except OSError as exc:
        return f"cannot write into {probe} ({exc})"
    return None


def check_storage(run_dir: str | Path, model_dir: str | Path, nodes: list[NodeInfo], timeout_s: float) -> None:
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(run_dir).resolve() / CHECK_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    token = uuid.uuid4().hex
    (folder / "token").write_text(token)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                .remote(str(folder), token, str(Path(model_dir).resolve()), n.node_id) for n in nodes]
        try:
            answers = ray.get(refs, timeout=timeout_s)
        except GetTimeoutError as exc:
            raise ClusterStartError(f"storage check: not every node answered within cluster.start_timeout_s = "
                                    f"{timeout_s:g} s") from exc
        wrong = [f"node {n.address} ({n.node_id[:12]}): {why}" for n, why in zip(nodes, answers) if why]
        wrong += [f"node {n.address} ({n.node_id[:12]}): its file in {folder} is not visible to the driver"
                  for n, why in zip(nodes, answers) if not why and not (folder / n.node_id).is_file()]
        if wrong:
            raise ClusterStartError(f"run_dir {Path(run_dir).resolve()} must be one folder that every node of the cluster "
                                    f"sees at that path (a shared mount; {README}):\n  - " + "\n  - ".join(wrong))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
