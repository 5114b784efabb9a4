"""The report page: one self-contained HTML file (PNGs embedded as data URIs) next to its PNGs.

Contract: `render_html(runs, plots)` returns the page as a string. It references every plot twice:
embedded (`<img src="data:image/png;base64,...">`, so the page alone is enough to share) and by
file name (`<a href="reward.png">`, for the PNG next to it). It also holds a summary table per run
(held-out reward before/after RL, steps, duration) and each run's resolved spec; with two or more
runs, a table of the spec fields that differ. Every text from a run is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json

from kpop.report.plots import Plot
from kpop.report.runs import RunData, flatten

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f4f4f4; text-align: left; } figure { margin: 2em 0; } img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; } pre { background: #f8f8f8; padding: 1em; overflow-x: auto; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _esc(value if value is not None else "-")


def summary_rows(run: RunData) -> list[tuple[str, str]]:
    evals = run.eval_by_label()
    rl, sft = run.phase("rl"), run.phase("sft")
    rows = [("run folder", _esc(run.path)),
            ("SFT steps / RL steps", f"{len(sft)} / {len(rl)}"),
            ("duration (s)", _num(run.records[-1]["time"]) if run.records else "-")]
    for label in ("before_rl", "after_rl"):
        rec = evals.get(label, {})
        rows.append((f"held-out reward {label} (greedy)",
                     f"{_num(rec.get('reward'))} ({_num(rec.get('episodes'))} tasks)" if rec else "-"))
    if rl:
        rows.append(("last RL step reward", _num(rl[-1].get("reward"))))
        rows.append(("mean generated tokens/s", _num(sum(r.get("gen_tokens_per_s", 0.0) for r in rl) / len(rl))))
    return rows


def _summary_table(runs: list[RunData]) -> str:
    head = "".join(f"<th>{_esc(r.name)}</th>" for r in runs)
    per_run = [dict(summary_rows(r)) for r in runs]
    body = "".join(f"<tr><th>{_esc(key)}</th>" + "".join(f"<td>{rows.get(key, '-')}</td>" for rows in per_run)
                   + "</tr>" for key in per_run[0])
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _spec_diff(runs: list[RunData]) -> str:
    flat = [flatten(r.spec or {}) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    if not differ:
        return "<p>The resolved specs are identical.</p>"
    head = "".join(f"<th>{_esc(r.name)}</th>" for r in runs)
    body = "".join(f"<tr><th>{_esc(k)}</th>" + "".join(f"<td>{_esc(json.dumps(f.get(k)))}</td>" for f in flat)
                   + "</tr>" for k in differ)
    return f"<table><tr><th>field</th>{head}</tr>{body}</table>"


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (f'<figure id="{plot.name}"><h2>{_esc(plot.title)}</h2>'
            f'<img src="data:image/png;base64,{data}" alt="{_esc(plot.title)}">'
            f'<figcaption>{_esc(plot.caption)} File: <a href="{plot.path.name}">{plot.path.name}</a></figcaption>'
            "</figure>")


def render_html(runs: list[RunData], plots: list[Plot]) -> str:
    title = "KPop report: " + " vs ".join(r.name for r in runs)
    toc = " · ".join(f'<a href="#{p.name}">{_esc(p.title)}</a>' for p in plots)
    specs = "".join(f"<h3>{_esc(r.name)}</h3><pre>{_esc(json.dumps(r.spec, indent=2) if r.spec else 'no spec.json')}</pre>"
                    for r in runs)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>", _summary_table(runs), f"<p>{toc}</p>",
        *(_figure(p) for p in plots),
        "<h2 id='spec'>Resolved spec</h2>",
        _spec_diff(runs) if len(runs) > 1 else "",
        specs, "</body></html>",
    ]
    return "\n".join(parts)
