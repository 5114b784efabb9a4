"""One short quickstart run, then `kpop report` on it and `kpop eval` on its checkpoint.

The eval check: greedy decoding of the run's own held-out tasks through a fresh engine must repeat
the run's "after_rl" evaluation (same checkpoint weights, tasks, limits and temperature 0). We
require the mean reward and each mean reward part within 0.05 and the mean generated tokens within
0.5 tokens; a decode that differs on even one of the 8 tasks changes a reward (part) by 0.125 or,
almost always, the length by 1/8 token or more... so in practice the match must be exact.
"""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kpop.cli.main import main
from kpop.metrics import read_metrics
from kpop.report.plots import PLOTS
from kpop.spec import load_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EVAL_TASKS = 8
# 40 SFT steps: enough for the tiny model to stop running into max_new_tokens, so greedy
# response lengths and reward parts differ between tasks and fingerprint the decode.
OVERRIDES = ["sft.steps=40", "sft.num_examples=64", "sft.batch_size=16", "train.steps=2", "train.tasks_per_step=2",
             "rollout.group_size=4", f"train.eval_tasks={EVAL_TASKS}", "train.checkpoint_every=2",
             "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
             "logging.progress=lines"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(data: bytes) -> None:
    import io

    from PIL import Image

    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width >= 400 and image.height >= 200
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    from kpop.launch import run

    run_dir = tmp_path_factory.mktemp("quickstart")
    spec = load_spec(REPO / "examples" / "quickstart.yaml", [*OVERRIDES, f"run_dir={run_dir}"])
    return spec, run(spec)


def test_run_records_trajectory_stats_and_tensorboard_events(finished_run):
    spec, _ = finished_run
    rl = [r for r in read_metrics(spec.run_dir) if r["phase"] == "rl"]
    for rec in rl:
        # synchronous loop: every generated token is on-policy (version gap 0)
        assert rec["staleness_hist"] == [round(rec["gen_tokens"] * rec["episodes"])]
        assert 0.0 <= rec["pass_rate/calculator"] <= 1.0 and rec["episodes/calculator"] == rec["episodes"]
        assert 0.0 <= rec["env_latency_p50"] <= rec["env_latency_p95"] <= rec["env_latency_p99"]
        assert rec["response_len_p50"] <= rec["response_len_max"]
        assert 0.0 <= rec["masked_fraction"] <= 1.0                    # logged with the mismatch
    assert list((spec.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_report_of_the_run_references_every_plot_and_every_png_is_valid(finished_run, capsys):
    spec, _ = finished_run
    assert main(["report", str(spec.run_dir)]) == 0
    out = spec.run_dir / "report"
    assert str(out / "index.html") in capsys.readouterr().out
    page = (out / "index.html").read_text()
    for name, _title, _, _ in PLOTS:
        assert_valid_png((out / f"{name}.png").read_bytes())
        assert f'href="{name}.png"' in page and f'id="{name}"' in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(PLOTS) and all(base64.b64decode(d).startswith(PNG_SIGNATURE) for d in embedded)
    assert "&quot;run_dir&quot;" in page                               # the resolved spec is on the page


def test_eval_greedy_repeats_the_runs_held_out_reward(finished_run):
    spec, result = finished_run
    ckpt = spec.run_dir / "checkpoints" / "last"
    proc = subprocess.run([sys.executable, "-m", "kpop.cli.main", "eval", str(ckpt), "--env", "calculator",
                           "--tasks", str(EVAL_TASKS), "--k", "2", "--samples", "3", "--json"],
                          check=False, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    row = {r["env"]: r for r in out["rows"]}["all"]
    after = result["after_rl"]
    assert row["tasks"] == EVAL_TASKS == after["episodes"] and out["run_spec_found"]
    assert abs(row["greedy_reward"] - after["reward"]) <= 0.05, (row, after)
    assert abs(row["greedy_gen_tokens"] - after["gen_tokens"]) <= 0.5, (row, after)
    assert row["greedy_pass"] == pytest.approx(after["pass_rate"], abs=0.05)
    for part, value in row["greedy_reward_parts"].items():
        assert abs(value - after[f"reward/{part}"]) <= 0.05, (part, row, after)
    p1, pk = row["pass_at"]["pass@1"], row["pass_at"]["pass@2"]
    assert 0.0 <= p1 <= pk <= 1.0
