"""`kpop report` on synthetic runs: every plot is a real PNG, the HTML references all of them,
two runs are overlaid, and plots whose metrics a run lacks still render (saying so)."""

import base64
import io
import json
import re

import pytest

from kpop.cli.main import main
from kpop.metrics import MetricsWriter
from kpop.report.build import build_report
from kpop.report.plots import PLOTS
from kpop.spec.run import LoggingSpec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(data: bytes) -> None:
    from PIL import Image

    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width >= 400 and image.height >= 200
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20                # drawn on, not a blank canvas


def _fake_run(path, name, seed, steps=6, async_keys=True, parts=("task",), sft_envs=()):
    path.mkdir(parents=True)
    (path / "spec.json").write_text(json.dumps({"name": name, "seed": seed, "train": {"steps": steps}}))
    w = MetricsWriter(path, LoggingSpec(tensorboard=False))
    for s in range(1, 4):
        w.write("sft", s, {"loss": 3.0 / s, "grad_norm": 1.0, "tokens": 100,
                           **{f"loss/{e}": (k + 2.0) / s for k, e in enumerate(sft_envs)}})
    w.write("eval", 0, {"label": "before_rl", "reward": 0.1, "episodes": 4.0, "pass_rate/calculator": 0.25})
    for s in range(1, steps + 1):
        rec = {"reward": 0.1 * s, **{f"reward/{p}": 0.1 * s for p in parts}, "gen_tokens": 20.0 + s, "response_len_p50": 20.0,
               "response_len_max": 30.0, "mismatch": 0.01 * seed, "clipped_fraction": 0.02, "gen_tokens_per_s": 50.0,
               "step_s": 2.0, "gen_s": 1.5, "train_s": 0.5, "pass_rate/calculator": 0.1 * s}
        if async_keys:
            rec |= {"staleness_hist": [10, seed, 1], "env_latency_p50": 0.01, "env_latency_p95": 0.02,
                    "env_latency_p99": 0.05}
        w.write("rl", s, rec)
    w.write("eval", steps, {"label": "after_rl", "reward": 0.5, "episodes": 4.0, "pass_rate/calculator": 0.5})
    return path


def test_single_run_report_has_every_plot_embedded_and_linked(tmp_path):
    run = _fake_run(tmp_path / "a", "alpha", 1)
    assert main(["report", str(run)]) == 0
    out = run / "report"
    page = (out / "index.html").read_text()
    for name, title, _, _ in PLOTS:
        png = (out / f"{name}.png").read_bytes()
        assert_valid_png(png)
        assert f'href="{name}.png"' in page and title in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(PLOTS)
    for data in embedded:
        assert_valid_png(base64.b64decode(data))
    assert "alpha" in page and "&quot;seed&quot;: 1" in page          # the resolved spec, escaped
    assert "held-out reward after_rl" in page and "0.5" in page


def test_two_runs_are_overlaid_and_their_spec_differences_listed(tmp_path):
    a, b = _fake_run(tmp_path / "a", "same", 1), _fake_run(tmp_path / "b", "same", 2, steps=4, async_keys=False)
    report = build_report([a, b])
    assert report.html == a / "report_vs_b" / "index.html"
    assert [r.name for r in report.runs] == ["same (a)", "same (b)"]  # colliding names disambiguated
    page = report.html.read_text()
    assert "same (a)" in page and "same (b)" in page
    assert "<th>seed</th><td>1</td><td>2</td>" in page and "<th>train.steps</th><td>6</td><td>4</td>" in page
    for png in report.pngs:
        assert_valid_png(png.read_bytes())


def test_plots_without_data_still_render_and_missing_runs_are_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    report = build_report([empty], tmp_path / "out")
    assert len(report.pngs) == len(PLOTS)
    for png in report.pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2_000
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("phase", ["rl", "eval"])
def test_report_series_skip_non_numeric_values(tmp_path, phase):
    from kpop.report.runs import load_run

    run = _fake_run(tmp_path / "a", "x", 0)
    data = load_run(run)
    steps, values = data.series(phase, "reward")
    assert steps and all(isinstance(v, float) for v in values)
    assert data.series(phase, "label") == ([], [])
    assert data.staleness_total() == [60, 0, 6]


def test_every_series_has_its_own_colour_and_a_smoothed_line_over_the_raw_one(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from kpop.report.plots import RAW_ALPHA, plot_reward
    from kpop.report.runs import load_run
    from kpop.report.smooth import ema

    run = load_run(_fake_run(tmp_path / "a", "a", seed=1, steps=8))
    fig = plt.figure()
    plot_reward(fig, [run])
    lines = fig.axes[0].get_lines()
    raw = [ln for ln in lines if ln.get_alpha() == RAW_ALPHA]
    bold = [ln for ln in lines if ln.get_label() in ("reward", "reward/task")]
    assert len(raw) == 2 and len(bold) == 2
    assert len({to_hex(ln.get_color()) for ln in bold}) == 2                 # not one blue for both
    for ln in bold:
        twin = next(r for r in raw if to_hex(r.get_color()) == to_hex(ln.get_color()))
        assert list(ln.get_ydata()) == pytest.approx(ema(list(twin.get_ydata())))
        assert list(twin.get_ydata()) == pytest.approx([0.1 * s for s in range(1, 9)])
    dots = [ln for ln in lines if ln.get_label() == "held-out reward (greedy)"]
    assert {to_hex(d.get_color()) for d in dots}.isdisjoint({to_hex(ln.get_color()) for ln in bold})
    plt.close(fig)


def test_a_six_family_run_s_twenty_reward_parts_get_twenty_one_distinct_colours(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from kpop.report.plots import RAW_ALPHA, plot_reward
    from kpop.report.runs import load_run

    parts = [f"part{i:02d}" for i in range(20)]
    run = load_run(_fake_run(tmp_path / "a", "a", seed=1, steps=8, parts=parts))
    fig = plt.figure()
    plot_reward(fig, [run])
    bold = [ln for ln in fig.axes[0].get_lines() if ln.get_alpha() != RAW_ALPHA and ln.get_label().startswith("reward")]
    assert len(bold) == 21
    assert len({to_hex(ln.get_color()) for ln in bold}) == 21     # C0..C9 alone would repeat from the 11th
    plt.close(fig)


def test_sft_loss_plot_draws_each_environment_s_loss_beside_the_total(tmp_path):
    import matplotlib.pyplot as plt

    from kpop.report.plots import plot_sft_loss
    from kpop.report.runs import load_run

    run = load_run(_fake_run(tmp_path / "a", "a", seed=1, sft_envs=("calculator", "search")))
    fig = plt.figure()
    plot_sft_loss(fig, [run])
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"loss", "loss/calculator", "loss/search"}
    assert lines["loss/search"] == pytest.approx([3.0, 1.5, 1.0])
    plt.close(fig)
