"""Multi-token prediction in the learner (kpop.learner.objectives.mtp): the MTP loss it reports and
trains equals the hybrid model's own `mtp_loss` on the trained tokens, SFT steps train the MTP
layers by the config's weight (0: no gradient), RL steps train them without touching the trunk's
update, and a model without MTP layers takes exactly the step it took before MTP training existed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kpop.spec import load_spec
from kpop.trajectory import Trajectory

PROMPT = 4   # prompt tokens per row: every generated token is a target of MTP depth 0


@pytest.fixture(scope="module")
def mtp_dir(learner_model_dir, tmp_path_factory):
    """The fresh tiny hybrid of conftest.learner_hybrid_dir with one MTP layer (weight 0.1, the preset's)."""
    from transformers import AutoTokenizer

    from kpop.models.hybrid.fresh import build_hybrid

    tokenizer = AutoTokenizer.from_pretrained(str(learner_model_dir))
    spec = load_spec(None, ["model.type=hybrid", "model.init_std=0.2", "model.num_mtp_layers=1"]).model
    return build_hybrid(spec, tokenizer, tmp_path_factory.mktemp("learner_hybrid_mtp"), seed=0)


def with_weight(model_dir, weight: float, tmp_path):
    out = tmp_path / f"mtp_weight_{weight}"
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["mtp_loss_scaling_factor"] = weight
    (out / "config.json").write_text(json.dumps(config))
    return out


def rows(n: int = 8, length: int = 20, seed: int = 0) -> list[Trajectory]:
    """Unequal lengths (padded batch); rewards alternate inside groups of two (non-zero advantages)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = length - (i % 4) * 3
        ids = torch.randint(4, 100, (size,), generator=gen).tolist()
        g = size - PROMPT
        out.append(Trajectory("t", "e", ids, [0] * PROMPT + [1] * g, [0.0] * PROMPT + [-4.0] * g,
                              [-1] * PROMPT + [0] * g, reward=float(i % 2), group_id=str(i // 2)))
    return out


def learner(model_dir, *overrides: str):
    from kpop.learner.learner import Learner

    spec = load_spec(None, ["learner.lr=1e-3", "learner.micro_batch_size=8", "learner.off_policy.type=none",
                            *overrides]).learner
    return Learner(str(model_dir), spec, seed=0, num_threads=1)


def mtp_params(learn) -> dict[str, torch.Tensor]:
    model = learn.engine.module
    return dict(model.model.layers[model.config.num_hidden_layers:].named_parameters())


def trunk_params(learn) -> dict[str, torch.Tensor]:
    mtp = {id(p) for p in mtp_params(learn).values()}
    return {k: p for k, p in learn.engine.module.named_parameters() if id(p) not in mtp}


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in params.items()}


def test_the_learners_mtp_loss_is_the_models_own_on_the_trained_tokens(mtp_dir):
    from transformers import AutoModelForCausalLM

    from kpop.learner.batch import collate

    batch = rows()
    reference = AutoModelForCausalLM.from_pretrained(str(mtp_dir), dtype=torch.float32).train()
    assert reference.config.num_nextn_predict_layers == 1
    b = collate(batch, 0)
    trained = torch.zeros_like(b.input_ids, dtype=torch.bool)
    trained[:, 1:] = b.loss_mask > 0
    labels = torch.where(trained, b.input_ids, -100)           # prompt and padding ignored
    with torch.no_grad():
        out = reference.model(b.input_ids, b.attention_mask)
        expected = float(reference.mtp_loss(out, labels, b.attention_mask))
    # a naive per-position reference of the same: depth 0 at position t predicts token t + 2
    with torch.no_grad():
        h = reference.model.layers[-1](torch.cat([out["embeds"][:, 1:], torch.zeros_like(out["embeds"][:, :1])], 1),
                                       out["pre_norm_hidden"], out["position_ids"], b.attention_mask)
        logp = torch.log_softmax(reference.lm_head(h).float(), -1)
    nll = [-float(logp[i, t, b.input_ids[i, t + 2]]) for i in range(len(batch)) for t in range(b.input_ids.shape[1] - 2)
           if trained[i, t + 2]]
    assert expected == pytest.approx(sum(nll) / len(nll), rel=1e-5)

    m = learner(mtp_dir).train_step(batch, "sft")
    assert m.mtp["mtp_loss"] == pytest.approx(expected, rel=1e-5)   # at the step's starting weights
    assert m.mtp["mtp_loss"] > 1.0                                    # a fresh model: far from 0


def eh_proj_grad(learn) -> list[torch.Tensor]:
    """Collects the gradient that reaches the MTP layer's eh_proj in each backward."""
    grads: list[torch.Tensor] = []
    next(p for k, p in mtp_params(learn).items() if k.endswith("eh_proj.weight")).register_hook(
        lambda g: grads.append(g.clone()))
    return grads


def test_sft_trains_the_mtp_layers_by_their_weight_and_weight_zero_gives_them_no_gradient(mtp_dir, tmp_path):
    learn = learner(mtp_dir)
    grad = eh_proj_grad(learn)
    before = snapshot(mtp_params(learn))
    learn.train_step(rows(), "sft")
    changed = {k for k, p in mtp_params(learn).items() if not torch.equal(p, before[k])}
    for name in ("eh_proj.weight", "attention.kv_a_proj_with_mqa.weight", "final_layernorm.weight"):
        assert any(k.endswith(name) for k in changed), (name, sorted(changed))
    double = learner(with_weight(mtp_dir, 0.2, tmp_path))               # the preset's 0.1, doubled
    grad2 = eh_proj_grad(double)
    double.train_step(rows(), "sft")
    assert len(grad) == len(grad2) == 1 and grad[0].abs().sum() > 0
    assert torch.allclose(grad2[0], 2 * grad[0], rtol=1e-5, atol=1e-9)

    off = learner(with_weight(mtp_dir, 0.0, tmp_path))
    grads = []
    for p in mtp_params(off).values():
        p.register_hook(lambda g: grads.append(g))
    before_mtp, before_trunk = snapshot(mtp_params(off)), snapshot(trunk_params(off))
    m = off.train_step(rows(), "sft")
    assert grads == []                                                 # autograd never reached them
    assert all(torch.equal(p, before_mtp[k]) for k, p in mtp_params(off).items())
    assert any(not torch.equal(p, before_trunk[k]) for k, p in trunk_params(off).items())
    assert m.mtp["mtp_loss"] > 1.0                                    # still measured


def test_rl_trains_only_the_mtp_layers_with_the_mtp_term(mtp_dir, tmp_path):
    """Same RL step with weight 0.1 and 0: the trunk (embeddings and shared head included) moves
    identically, the MTP layers only with the weight."""
    spec = ("learner.grad_clip=0",)    # the clip's global norm would couple the two
    on, off = learner(mtp_dir, *spec), learner(with_weight(mtp_dir, 0.0, tmp_path), *spec)
    start = snapshot(mtp_params(on))
    m_on, m_off = on.train_step(rows(), "rl"), off.train_step(rows(), "rl")
    assert m_on.loss == m_off.loss and m_on.mtp["mtp_loss"] == m_off.mtp["mtp_loss"] > 1.0
    on_trunk, off_trunk = trunk_params(on), trunk_params(off)
    assert all(torch.equal(on_trunk[k], off_trunk[k]) for k in on_trunk)
    assert any(not torch.equal(p, start[k]) for k, p in mtp_params(on).items())
    assert all(torch.equal(p, start[k]) for k, p in mtp_params(off).items())


def test_a_model_without_mtp_layers_takes_the_plain_sft_step(learner_hybrid_dir):
    """The learner's step on the MTP-less hybrid is bit-identical to a hand-written one: masked
    next-token NLL over the trained tokens, gradient clipped, one AdamW step."""
    from transformers import AutoModelForCausalLM

    from kpop.learner.batch import collate

    learn = learner(learner_hybrid_dir, "learner.expert_bias_gamma=0")
    assert learn.mtp_layers == 0
    batch = rows()
    m = learn.train_step(batch, "sft")
    assert m.mtp == {}

    spec = learn.spec
    model = AutoModelForCausalLM.from_pretrained(str(learner_hybrid_dir), dtype=torch.float32).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    b = collate(batch, learn.pad_id)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    loss = -(logp * b.loss_mask).sum() / b.loss_mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], spec.grad_clip)
    opt.step()
    assert m.loss == float(loss.detach())
    trained = dict(learn.engine.module.named_parameters())
    assert all(torch.equal(trained[k], p) for k, p in model.named_parameters())


def test_two_mtp_depths_line_up_with_the_models_mtp_loss_and_layers_mode_reaches_only_them():
    from kpop.learner.objectives.mtp import mtp_loss
    from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM
    from kpop.models.hybrid.presets import preset_config

    torch.manual_seed(0)
    model = BailingMoeV2_5ForCausalLM(preset_config("tiny", num_nextn_predict_layers=2, vocab_size=100)).train()
    ids = torch.randint(4, 100, (3, 12))
    attn = torch.ones_like(ids)
    trained = torch.zeros_like(ids, dtype=torch.bool)
    trained[:, PROMPT:] = True
    trained[2, 9:] = False                                             # a shorter answer
    mask = trained[:, 1:].float()                                      # Batch layout: index s is token s + 1
    labels = torch.where(trained, ids, -100)
    out = model(input_ids=ids, attention_mask=attn, mtp_logprobs="all")
    mtp_logp = out["mtp_logprobs"]
    assert mtp_logp.shape == (2, 3, 11)
    assert torch.equal(mtp_logp[0, :, :1], torch.zeros(3, 1)) and torch.equal(mtp_logp[1, :, :2], torch.zeros(3, 2))
    with torch.no_grad():
        expected = model.mtp_loss(model.model(ids, attn), labels, attn)
    assert float(mtp_loss(mtp_logp, mask, int(mask.sum())).detach()) == pytest.approx(float(expected), rel=1e-5)

    model.zero_grad()
    out = model(input_ids=ids, attention_mask=attn, mtp_logprobs="layers")
    mtp_loss(out["mtp_logprobs"], mask, int(mask.sum())).backward()
    n = model.config.num_hidden_layers
    reached = {k for k, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached and all(k.startswith(f"model.layers.{n}.") or k.startswith(f"model.layers.{n + 1}.") for k in reached)
    assert any(k.startswith(f"model.layers.{n + 1}.eh_proj") for k in reached)
    assert all(p.requires_grad for p in model.lm_head.parameters())   # switched back on after the head's call
