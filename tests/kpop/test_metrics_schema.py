"""Metrics: trajectory statistics, the JSONL / TensorBoard / W&B sinks, and the progress display."""

import importlib.util
import json
from pathlib import Path

import pytest

from kpop.metrics import KEYS, MetricsWriter, definition, markdown_table, read_metrics, trajectory_stats
from kpop.progress import Progress, format_duration, format_info
from kpop.spec.run import LoggingSpec, WandbSpec
from kpop.trajectory import Timing, Trajectory


def _traj(env: str, task_score: float, versions: list[int], env_s: float = 0.0, turns: int = 1) -> Trajectory:
    gen = len(versions)
    return Trajectory(task_id="t", env_id=env, token_ids=list(range(2 + gen)), loss_mask=[0, 0] + [1] * gen,
                      logprobs=[0.0, 0.0] + [-1.0] * gen, versions=[-1, -1] + versions, reward=task_score - 0.1,
                      reward_parts={"task": task_score}, num_turns=turns,
                      timing=Timing(generate_s=0.1, env_s=env_s, total_s=1.0 + env_s))


def test_trajectory_stats_pass_rates_lengths_latency_and_staleness():
    trajs = [_traj("calc", 1.0, [5, 5, 4], env_s=0.2, turns=2), _traj("calc", 0.0, [3], env_s=0.4),
             _traj("search", 1.0, [5, 5], env_s=1.0)]
    s = trajectory_stats(trajs)
    assert s["pass_rate"] == pytest.approx(2 / 3)                    # passes on the task part, not the reward
    assert s["pass_rate/calc"] == 0.5 and s["pass_rate/search"] == 1.0
    assert s["episodes/calc"] + s["episodes/search"] == 3
    # the mean reward per family: rewards are task score - 0.1 here
    assert s["env_reward/calc"] == pytest.approx(0.4) and s["env_reward/search"] == pytest.approx(0.9)
    assert s["response_len_p50"] == 2.0 and s["response_len_max"] == 3.0
    # seconds per env step: 0.1, 0.4, 1.0 -> p50 0.4, p95 interpolated between 0.4 and 1.0
    assert s["env_latency_p50"] == pytest.approx(0.4)
    assert s["env_latency_p95"] == pytest.approx(0.4 + 0.9 * 0.6)
    # gaps against the newest version (5): tokens at 5,5,5,5 -> 0; 4 -> 1; 3 -> 2
    assert s["staleness_hist"] == [4, 1, 1] and sum(s["staleness_hist"]) == 6
    assert s["staleness_mean"] == pytest.approx(3 / 6) and s["staleness_max"] == 2.0
    assert trajectory_stats(trajs, policy_version=6)["staleness_hist"] == [0, 4, 1, 1]
    assert trajectory_stats([]) == {}


def _tb_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_writer_writes_jsonl_and_tensorboard_scalars_and_histograms(tmp_path):
    w = MetricsWriter(tmp_path, LoggingSpec(tensorboard=True))
    rec = w.write("rl", 1, {"reward": 0.25, "reward/task": 0.5, "staleness_hist": [3, 1], "version": 2})
    w.write("rl", 2, {"reward": 0.75, "staleness_hist": [4]})
    w.write("eval", 2, {"label": "after_rl", "reward": 0.5})
    w.close()
    assert rec["phase"] == "rl" and rec["step"] == 1 and isinstance(rec["time"], float)
    assert [r["reward"] for r in read_metrics(tmp_path)] == [0.25, 0.75, 0.5]
    acc = _tb_scalars(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("rl/reward")] == [(1, 0.25), (2, 0.75)]
    assert [e.value for e in acc.Scalars("rl/reward/task")] == [0.5]
    assert [(e.step, e.value) for e in acc.Scalars("eval/reward")] == [(2, 0.5)]
    hist = acc.Histograms("rl/staleness_hist")[0].histogram_value
    assert hist.num == 4 and hist.sum == 1 and list(hist.bucket) == [3, 1]


def test_writer_reads_logging_from_the_runs_spec_and_survives_a_broken_sink(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"name": "x", "logging": {"tensorboard": False}}))
    w = MetricsWriter(tmp_path)
    assert w.sinks == [] and not (tmp_path / "tensorboard").exists()

    class Broken:
        def write(self, *a):
            raise RuntimeError("disk full")

        def close(self):
            pass

    w.sinks.append(Broken())
    w.write("sft", 1, {"loss": 1.0})
    w.write("sft", 2, {"loss": 0.5})
    assert w.sinks == [] and [r["loss"] for r in read_metrics(tmp_path)] == [1.0, 0.5]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is optional (the `dev` extra); not installed here")
def test_wandb_offline_writes_a_local_run_without_network(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    w = MetricsWriter(tmp_path, LoggingSpec(tensorboard=False, wandb=WandbSpec(mode="offline", project="t")),
                      {"name": "unit"})
    assert len(w.sinks) == 1, caplog.text                               # the W&B sink started
    w.write("rl", 1, {"reward": 0.125, "staleness_hist": [2, 1]})
    w.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert b"rl/reward" in runs[0].read_bytes()


def test_progress_lines_show_step_reward_throughput_staleness_mismatch_and_eta(capsys):
    p = Progress(10, mode="lines", label="rl")
    record = {"phase": "rl", "step": 2, "time": 1.0, "reward": 0.5, "gen_tokens_per_s": 1234.0,
              "staleness_mean": 0.25, "mismatch": 0.0125, "staleness_hist": [1, 2], "loss_extra": 1.0}
    p.update(2, record)
    p.close()
    line = capsys.readouterr().err.strip()
    assert line.startswith("[rl 2/10] reward 0.5  tok/s 1,234  stale 0.25  mismatch 0.0125")
    assert "eta " in line and "staleness_hist" not in line and "loss_extra" not in line
    assert p.eta_s(2, now=p._t0 + 4.0) == pytest.approx(16.0)          # 2 s/step x 8 steps left
    assert p.eta_s(0) is None
    assert format_info({"reward": 1.0, "custom": 3}) == "reward 1  custom 3"
    assert [format_duration(s) for s in (5, 125, 7300)] == ["5s", "2m05s", "2h01m"]


def test_progress_off_prints_nothing(capsys):
    p = Progress(3, mode="off")
    p.update(1, {"reward": 1.0})
    p.close()
    assert capsys.readouterr().err == ""


def test_every_key_has_one_definition_the_readme_table_is_it_and_the_writer_refuses_others(tmp_path):
    names = [k.name for k in KEYS]
    assert len(names) == len(set(names))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme
    assert definition("reward/shape/dynamic_length", "rl").name == "reward/<part>"
    assert definition("pass_rate/coding", "eval").name == "pass_rate/<env>"
    assert definition("loss", "eval") is None and definition("buffer_size", "rl").scheduler_only
    w = MetricsWriter(tmp_path, LoggingSpec(tensorboard=False))
    with pytest.raises(ValueError, match=r"max_gap.*kpop/metrics.py"):
        w.write("rl", 1, {"reward": 1.0, "max_gap": 2})
    assert read_metrics(tmp_path) == []
