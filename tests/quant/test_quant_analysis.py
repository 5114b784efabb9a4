"""Shrinkage metrics against hand computation, the paper's qualitative claims on synthetic data,
the model probe's captured tensors, and the `kpop quant analyze` command."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kpop.quant.analysis import claims, operand_rows, quantise_operand, synthetic
from kpop.quant.metrics import ErrorSums, error_stats
from kpop.quant.probe import capture


def test_metrics_by_hand():
    x = torch.tensor([1.0, -2.0, 0.2, 3.0])
    q = torch.tensor([1.0, -1.5, 0.0, 3.0])
    s = error_stats(q, x)
    # e = (0, .5, -.2, 0); Σe² = .29; Σe·x = -1 - .04; Σx² = 14.04; Σe·sign(x) = -.5 - .2; Σ|x| = 6.2
    assert s.rel_mse == pytest.approx(0.29 / 14.04)
    assert s.gain_error == pytest.approx(-1.04 / 14.04)
    assert s.beta == pytest.approx(1 - 1.04 / 14.04)
    assert s.signed_error == pytest.approx((-0.7 / 4) / (6.2 / 4))
    pooled = ErrorSums().add(q[:2], x[:2]).add(q[2:], x[2:]).stats()
    assert pooled.gain_error == pytest.approx(s.gain_error) and pooled.n == 4


def test_operand_error_is_measured_in_the_original_domain():
    # error measured in the original domain: Q(xM)Mᵀ - x; rel. MSE equals the rotated-domain one
    x = synthetic("student_t", (64, 256), torch.Generator().manual_seed(0)).float()
    from kpop.quant.grids import get_grid
    from kpop.quant.hadamard import rht
    from kpop.quant.scaling import BlockFormat, fake_quantize

    xt = rht(x, 16, 0)
    rotated = error_stats(fake_quantize(xt, get_grid("uniform"), BlockFormat()), xt)
    original = error_stats(quantise_operand(x, "uniform", 16), x)
    assert original.rel_mse == pytest.approx(rotated.rel_mse, rel=1e-4)
    assert original.gain_error == pytest.approx(rotated.gain_error, rel=1e-3, abs=1e-6)


@pytest.fixture(scope="module")
def synthetic_rows():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dist in ("gaussian", "student_t"):
        rows += operand_rows(f"synthetic:{dist}", [synthetic(dist, (256, 1024), gen)])
    return rows


def test_paper_claims_hold_on_synthetic_data(synthetic_rows):
    result = claims(synthetic_rows)
    assert result == {
        "e2m1_gain_error_negative": True,
        "uniform_gain_error_near_zero": True,
        "rht_lowers_uniform_error_on_heavy_tails": True,
        "rht_does_not_help_e2m1": True,
    }
    row = {(r["source"], r["grid"], r["rht"]): r for r in synthetic_rows}
    # E2M1's shrinkage is many standard errors below zero, not noise
    for dist in ("gaussian", "student_t"):
        e2m1 = row[f"synthetic:{dist}", "e2m1", 0]
        assert e2m1["gain_error"] < -5 * e2m1["gain_se"]
    # on heavy tails RHT lowers the uniform grid's error by a wide margin, not marginally
    t = "synthetic:student_t"
    assert row[t, "uniform", 16]["rel_mse"] < 0.7 * row[t, "uniform", 0]["rel_mse"]


def test_claims_detect_a_violation(synthetic_rows):
    flipped = [dict(r, gain_error=-r["gain_error"]) if r["grid"] == "e2m1" else r for r in synthetic_rows]
    assert claims(flipped)["e2m1_gain_error_negative"] is False


class _LM(nn.Module):
    """HF-style interface (input_ids, labels) → .loss, for the probe."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 24)
        self.lm_head = nn.Linear(24, 20)

    def forward(self, input_ids, labels):
        h = self.fc(self.emb(input_ids))
        self.saved_h = h
        h.retain_grad()
        logits = self.lm_head(torch.tanh(h))
        return SimpleNamespace(loss=nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()))


def test_probe_captures_inputs_weights_and_output_gradients():
    model = _LM()
    tokens = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(0))
    captured = capture(model, tokens)
    assert [name for name, _ in captured] == ["fc"]
    x, w, dy = captured[0][1]
    assert torch.equal(x, model.emb(tokens).reshape(-1, 16).detach())
    assert w is model.fc.weight or torch.equal(w, model.fc.weight)
    assert torch.allclose(dy, model.saved_h.grad.reshape(-1, 24))


def test_cli_analyze_json(capsys):
    from kpop.cli import quant_cmd

    parser = argparse.ArgumentParser()
    quant_cmd.add_arguments(parser)
    rc = quant_cmd.run(parser.parse_args(["analyze", "--json", "--no-model", "--rows", "64", "--cols", "256"]))
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"config", "operands", "gemms", "claims"}
    assert len(report["operands"]) == 2 * 2 * 3  # dists × grids × RHT sizes
    assert {(g["recipe"], g["gemm"]) for g in report["gemms"]} == {
        (r, g) for r in ("nvfp4", "mxfp4", "ufp4") for g in ("fprop", "dgrad", "wgrad")
    }
    assert rc == (0 if all(report["claims"].values()) else 1)
    assert quant_cmd.NAME == "quant"


@pytest.mark.slow
def test_analyze_covers_the_tiny_llama_weights_activations_and_gradients():
    from kpop.quant.analysis import analyze

    report = analyze(rows=64, cols=256, with_model=True, depth=8)
    sources = {r["source"] for r in report["operands"]}
    assert {"model:weights", "model:activations", "model:gradients"} <= sources
    for kind in ("weights", "activations", "gradients"):
        e2m1 = next(r for r in report["operands"] if r["source"] == f"model:{kind}" and r["grid"] == "e2m1" and r["rht"] == 0)
        assert e2m1["gain_error"] < 0 and e2m1["n"] > 10_000
    model_gemms = [g for g in report["gemms"] if g["source"] == "model"]
    assert len(model_gemms) == 9 and all(0.5 < g["beta"] < 1.5 for g in model_gemms)
