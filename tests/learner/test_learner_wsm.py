"""WSM merging: coefficients, hand-computed merged tensors, HF output folder, the CLI."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from kpop.learner.wsm import merge_coefficients, merge_state_dicts, wsm_merge


def test_coefficients_hand_computed():
    assert merge_coefficients(4) == [0.25] * 4
    assert merge_coefficients(3, "linear") == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert merge_coefficients(3, "exponential", gamma=0.5) == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])
    with pytest.raises(ValueError):
        merge_coefficients(0)


def test_merge_state_dicts_in_float64_and_copies_buffers():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 6.0], dtype=torch.bfloat16), "ids": torch.tensor([0, 1])}
    m = merge_state_dicts([a, b], [0.25, 0.75])
    assert m["w"].dtype == torch.bfloat16 and m["w"].tolist() == [2.5, 5.0]
    assert torch.equal(m["ids"], a["ids"])
    with pytest.raises(ValueError):
        merge_state_dicts([a, {"w": a["w"], "ids": torch.tensor([1, 1])}], [0.5, 0.5])


def test_wsm_merge_window_writes_a_hf_folder(tmp_path):
    folders = []
    for i, v in enumerate([10.0, 1.0, 2.0, 4.0]):
        f = tmp_path / f"step_{i}"
        f.mkdir()
        save_file({"w": torch.full((2,), v)}, str(f / "model.safetensors"))
        (f / "config.json").write_text(f'{{"step": {i}}}')
        folders.append(f)
    out = wsm_merge(folders, tmp_path / "merged", window=3)          # the 10.0 checkpoint is outside
    assert load_file(str(out / "model.safetensors"))["w"].tolist() == pytest.approx([7 / 3, 7 / 3])
    assert (out / "config.json").read_text() == '{"step": 3}'
    from kpop.cli.main import main

    assert main(["merge", *map(str, folders), "--out", str(tmp_path / "lin"), "--window", "2", "--weighting", "linear"]) == 0
    # linear over (2, 4): 1/3 * 2 + 2/3 * 4 = 10/3
    assert load_file(str(tmp_path / "lin" / "model.safetensors"))["w"].tolist() == pytest.approx([10 / 3, 10 / 3])
