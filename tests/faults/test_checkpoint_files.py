"""Which folder a resume uses, for every state a SIGKILL can leave `checkpoints/` in, and the metrics
file cut back to its checkpoint (the end-to-end kills are in test_kill_resume.py)."""

from __future__ import annotations

import json

import pytest

from kpop.loop.resume import RUN_STATE, find_checkpoint
from kpop.metrics import MetricsWriter, read_metrics, truncate_metrics

pytestmark = pytest.mark.faults


def folder(root, name, complete=True):
    path = root / "checkpoints" / name
    (path / "trainer_state").mkdir(parents=True)
    if complete:
        (path / RUN_STATE).write_text(json.dumps({"step": int(name[5:11])}))
    return path


def point_last(root, name):
    (root / "checkpoints" / "last").symlink_to(name)


def test_a_partial_folder_is_never_a_resume_point(tmp_path):
    one = folder(tmp_path, "step_000001")
    point_last(tmp_path, "step_000001")
    folder(tmp_path, "step_000002.partial")           # killed before the rename: even with its marker
    assert find_checkpoint(tmp_path, RUN_STATE) == one
    (tmp_path / "checkpoints" / "last").unlink()      # and without the link
    assert find_checkpoint(tmp_path, RUN_STATE) == one


def test_killed_inside_the_swap_of_a_step_saved_again_resumes_from_the_older_copy(tmp_path):
    folder(tmp_path, "step_000001")
    old = folder(tmp_path, "step_000002.old")          # step_000002 moved aside ...
    folder(tmp_path, "step_000002.partial")            # ... its replacement not renamed yet
    point_last(tmp_path, "step_000002")                # `last` names a folder that is not there
    assert find_checkpoint(tmp_path, RUN_STATE) == old
    new = folder(tmp_path, "step_000002")              # renamed, `last` valid again
    assert find_checkpoint(tmp_path, RUN_STATE) == new.resolve()


def test_newest_complete_step_without_a_link(tmp_path):
    folder(tmp_path, "step_000001")
    two = folder(tmp_path, "step_000002")
    folder(tmp_path, "step_000003", complete=False)
    assert find_checkpoint(tmp_path, RUN_STATE) == two
    assert find_checkpoint(tmp_path / "nothing", RUN_STATE) is None


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write("rl", 1, {"reward": 0.5})
    size = (tmp_path / "metrics.jsonl").stat().st_size   # what a checkpoint after step 1 records
    writer.write("rl", 2, {"reward": 0.7})
    truncate_metrics(tmp_path, size)
    assert [(r["step"], r["reward"]) for r in read_metrics(tmp_path)] == [(1, 0.5)]
    truncate_metrics(tmp_path, None)                      # a checkpoint that recorded no size: kept
    assert len(read_metrics(tmp_path)) == 1
    truncate_metrics(tmp_path, 0)                          # no checkpoint: the run starts over
    assert read_metrics(tmp_path) == []
