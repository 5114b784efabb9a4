"""The hybrid model's one-row decode as prepared native calls: each layer's arguments looked up once.

Why: at one float32 row every layer is already one or two native calls (kpop.rollout.builtin.
native), and what is left is the Python that finds their arguments: module attributes, packed
weights, dtype checks. A step streams ~180 MB of weights, which evicts those Python objects from
the caches, so that lookup costs 3-5x what it costs hot (a layer's argument lookup measured
18 -> 89 us after a 48 MB read). A `RowPlan` does it once: per layer a callable holding the
data pointers and sizes of its weights, so a step touches one plan entry and the per-step tensors.

Contract: `hybrid_row_plan(adapter)` is the plan, or None when some layer is not fully native
(another dtype, a bias, queries through a low-rank pair, a router or shared expert the kernels
do not take): the adapter then keeps its per-layer paths. A layer entry maps h [1, 1, hidden] to
h + attention(RMSNorm(h)) (`attention`) and h + MoE(RMSNorm(h)) (`feed_forward`), equal to the
per-layer paths to float32 rounding. The plan holds every tensor it points at (their memory
stays alive) and `valid()` says whether every parameter it stands for is still its module's,
with the storage it had: a weight update copied in place keeps the plan; a parameter replaced or
given new storage (`load_state_dict(assign=True)`, `model.to`) makes the adapter build a new one.
The adapters check it at every prefill (`PlanCache.check`), not every step: parameters are
replaced between generations, never inside a decode loop (the engine's updates copy in place),
and the check reads every watched entry (the medium hybrid's 268: 350 us a step once the step's
weights have evicted them from the caches, ~9% of a bf16 step). Modules replaced after the plan
was built are not seen (nor are they by the adapter's own list of layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kpop.models.layers.rope import rope_angles
from kpop.rollout.builtin import native
from kpop.rollout.builtin.gated_mlp import swiglu_weights
from kpop.rollout.builtin.moe_decode import stacks_of
from kpop.rollout.builtin.norms import eps_of
from kpop.rollout.builtin.packed import packed
from kpop.rollout.builtin.packed import rows as row_layout

MAX_TABLES = 1 << 14  # RoPE tables a plan keeps (positions x keys): a few MB


@dataclass
class RowPlan:
    attention: list[Callable]  # per layer: (h, its cache tensors..., step) -> new h
    feed_forward: list[Callable | None]  # per layer: (h, step) -> new h; None: not a MoE layer
    dtype: torch.dtype = torch.float32  # the weights', the caches' (but Lightning states') and h's
    head: Callable | None = None  # (h, step) -> logits [1, V] (final norm and head); None: the modules'
    embedding: torch.Tensor | None = None  # the token embedding table [V, hidden] (its rows are h)
    tables: dict = field(default_factory=dict)  # (RoPE key, position) -> (cos, sin, their pointers)
    held: list[torch.Tensor] = field(default_factory=list)  # what the pointers point into
    watched: list[tuple[dict, str, torch.Tensor]] = field(default_factory=list)  # (owner's dict, name, tensor)
    pointers: list[int] = field(default_factory=list)

    def table(self, key: tuple, position: int, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple:
        """(cos, sin, cos pointer, sin pointer) of RoPE table `key` at `position`: `compute()`'s
        tensors (made contiguous) at the first use of that position, then kept (every
        generation's steps reach the same positions; at most `MAX_TABLES`)."""
        hit = self.tables.get((key, position))
        if hit is None:
            if len(self.tables) >= MAX_TABLES:
                self.tables.clear()
            cos, sin = (t.contiguous() for t in compute())
            hit = self.tables[key, position] = (cos, sin, cos.data_ptr(), sin.data_ptr())
        return hit

    def seal(self) -> RowPlan:
        """Records the watched tensors' storage: the state `valid` compares with."""
        self.pointers = [t.data_ptr() for _, _, t in self.watched]
        return self

    def valid(self) -> bool:
        """Every parameter the plan stands for is still its module's, with the storage it had."""
        return all(owner.get(name) is t and t.data_ptr() == p for (owner, name, t), p in zip(self.watched, self.pointers))

    def watch(self, module, name: str = "weight") -> torch.Tensor:
        """`module`'s parameter (or buffer) `name`, checked by `valid` from now on."""
        owner = module._parameters if name in module._parameters else module._buffers
        tensor = owner.get(name)
        if tensor is None:
            raise NotNative
        self.watched.append((owner, name, tensor))
        return tensor

    def hold(self, *tensors: torch.Tensor, dtype: torch.dtype | None = None) -> list[int]:
        """Keeps `tensors` alive with the plan and returns their data pointers; NotNative if any
        is not a contiguous CPU tensor of `dtype` (the plan's unless given)."""
        if not native.fits(*tensors, dtype=dtype or self.dtype):
            raise NotNative
        self.held += tensors
        return [t.data_ptr() for t in tensors]

    def ends(self, embedding: nn.Module, norm, head: nn.Module) -> None:
        """The model's token embedding (a plain `nn.Embedding`: its rows are read as h) and its
        final norm and head (`norm_head`); either left None where it does not qualify."""
        if type(embedding) is nn.Embedding and embedding.max_norm is None:
            table = self.watch(embedding)
            if native.fits(table, dtype=self.dtype):
                self.embedding = table
        self.head = norm_head(self, norm, head)

    def embed(self, tokens: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """h [1, 1, hidden] of the one row's token: a view of the table's row, no copy (the
        kernels only read h); through `module` where the plan has no table."""
        if self.embedding is None:
            return module(tokens[:, None])
        return self.embedding[int(tokens[0])].view(1, 1, -1)

    def kernel(self, name: str):
        """The native kernel `name` for the plan's dtype (kpop.rollout.builtin.native.typed)."""
        return native.typed(name, self.dtype)

    def packed(self, owner, key: str, linears) -> int:
        """The pointer of the linears' weights packed as rows (kpop.rollout.builtin.packed)."""
        weights = [self.watch(lin) for lin in linears]
        return self.hold(packed(owner, key, weights, row_layout))[0]


class RowStep:
    """What the layers of one step share: its thread count, the row's length (`width`, also its
    position) and one contiguous RoPE table per (dims, theta) at that position, as pointers."""

    def __init__(self, plan: RowPlan, width: int) -> None:
        self.plan, self.width, self.threads = plan, width, torch.get_num_threads()

    def tables(self, rot: int, theta: float) -> tuple[int, int]:
        position = self.width
        hit = self.plan.table((rot, theta), position, lambda: rope_angles(torch.tensor([[position]]), rot, theta))
        return hit[2], hit[3]


class NotNative(Exception):
    """A builder's way of saying that a layer does not qualify."""


class PlanCache:
    """An adapter's plan: built at first use, rebuilt at the first use after `check()` found it
    invalid, None (remembered) where the builder declines; None whenever the kernels are
    unavailable, so `native.switched_off()` is honoured step by step."""

    def __init__(self, builder: Callable[[object], RowPlan | None]) -> None:
        self.builder, self.plan, self.built = builder, None, False

    def check(self) -> None:
        """Drops the plan if some parameter it stands for was replaced (adapters: at every prefill)."""
        if self.plan is not None and not self.plan.valid():
            self.plan, self.built = None, False

    def get(self, adapter) -> RowPlan | None:
        if not native.available():
            return None
        if not self.built:
            self.plan, self.built = self.builder(adapter), True
        return self.plan


def hybrid_row_plan(adapter) -> RowPlan | None:
    """`HybridAdapter`'s plan: every Lightning and MLA layer native, every MoE layer native, a
    dense SwiGLU feed-forward native where it qualifies (otherwise it keeps `moe_forward`: its
    entry is None)."""
    from kpop.models.layers.moe import MoE

    plan = RowPlan([], [], dtype=adapter.model.model.word_embeddings.weight.dtype)
    if plan.dtype not in native.DTYPES:
        return None
    for layer, mla in zip(adapter.layers, adapter.is_mla):
        attention = (_mla if mla else _lightning)(plan, layer)
        mlp = layer.mlp
        feed_forward = _moe(plan, mlp, layer.post_attention_layernorm) if isinstance(mlp, MoE) else swiglu_block(plan, layer)
        if attention is None or (isinstance(mlp, MoE) and feed_forward is None):
            return None
        plan.attention.append(attention)
        plan.feed_forward.append(feed_forward)
    inner = adapter.model.model
    plan.ends(inner.word_embeddings, inner.norm, adapter.model.lm_head)
    return plan.seal()


def plain(*linears) -> None:
    """NotNative unless every layer is a bias-free `nn.Linear`."""
    if any(type(lin) is not nn.Linear or lin.bias is not None for lin in linears):
        raise NotNative


def guard(build):
    """`build`, returning None where it raised NotNative."""

    def wrapped(*args):
        try:
            return build(*args)
        except NotNative:
            return None

    return wrapped


def lightning_qualifies(attn) -> bool:
    """Whether a Lightning layer's one-row block can run natively (dtype aside): plain bias-free
    projections, one eps for q and k norms, heads within the kernel's limit, groups dividing H d,
    RoPE within the head. Read through the modules' own dicts: this runs once a step on the
    per-layer path, where `nn.Module.__getattr__` costs ~1 us an attribute."""
    modules = attn._modules
    norms = (modules["query_layernorm"], modules["key_layernorm"]) if attn.use_qk_norm else ()
    linears = [modules.get(name) for name in ("query_key_value", "g_proj", "dense")]
    return not (
        any(type(lin) is not nn.Linear or lin.bias is not None for lin in linears) or attn.head_dim > native.MAX_HEAD_DIM
        or len({n.eps for n in norms}) > 1 or (attn.num_heads * attn.head_dim) % modules["g_norm"].groups
        or attn.rope_dim > attn.head_dim
    )


def mla_qualifies(attn) -> bool:
    """Whether an MLA layer's one-row block can run natively (dtype aside): queries from one
    projection (no low-rank pair), an even RoPE width, plain bias-free projections."""
    if attn.q_lora_rank is not None or attn.rope % 2:
        return False
    modules = attn._modules
    linears = [modules.get(name) for name in ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "dense")]
    return all(type(lin) is nn.Linear and lin.bias is None for lin in linears)


@guard
def _lightning(plan: RowPlan, layer) -> Callable:
    attn, norm, kernel = layer.attention, layer.input_layernorm, plan.kernel("kpop_lightning_layer_row")
    if not lightning_qualifies(attn):
        raise NotNative
    norms = (attn.query_layernorm, attn.key_layernorm) if attn.use_qk_norm else ()
    g_norm = attn.g_norm
    p_qkvg = plan.packed(attn, "qkv_g.weight", [attn.query_key_value, attn.g_proj])
    dense_w = plan.watch(attn.dense)
    p_norm, p_dense, p_g = plan.hold(plan.watch(norm), dense_w, plan.watch(g_norm))
    (p_decay,) = plan.hold(torch.exp(attn.log_decay(dense_w.device)).contiguous(), dtype=torch.float32)
    p_q, p_k = plan.hold(*(plan.watch(n) for n in norms)) if norms else (None, None)
    hidden, heads, d, half = dense_w.shape[0], attn.num_heads, attn.head_dim, attn.rope_dim // 2
    fixed = (eps_of(norm), p_qkvg, int(attn.linear_silu))
    rope_key = (attn.rope_dim, attn.rope_theta)
    tail = (p_g, heads, d, half, g_norm.groups, norms[0].eps if norms else 0.0, g_norm.eps, d**-0.5, p_dense, hidden)
    dtype = plan.dtype

    def run(h: torch.Tensor, state: torch.Tensor, step) -> torch.Tensor:
        cos, sin = step.tables(*rope_key) if half else (None, None)
        out, scratch = torch.empty(hidden, dtype=dtype), torch.empty(native.lightning_scratch(hidden, heads, d))
        kernel(h.data_ptr(), p_norm, *fixed, state.data_ptr(), p_decay, p_q, p_k,
                                     cos, sin, *tail, out.data_ptr(), scratch.data_ptr(), step.threads)
        return out.view(1, 1, hidden)

    return run


@guard
def _mla(plan: RowPlan, layer) -> Callable:
    attn, norm, kernel = layer.attention, layer.input_layernorm, plan.kernel("kpop_mla_layer_row")
    if not mla_qualifies(attn):
        raise NotNative
    kv_norm = attn.kv_a_layernorm
    p_qkva = plan.packed(attn, "q_kv_a.weight", [attn.q_proj, attn.kv_a_proj_with_mqa])
    dense_w = plan.watch(attn.dense)
    p_norm, p_kv_norm, p_kv_b, p_dense = plan.hold(plan.watch(norm), plan.watch(kv_norm), plan.watch(attn.kv_b_proj), dense_w)
    hidden, heads, nope, rope, v, rank = dense_w.shape[0], attn.num_heads, attn.nope, attn.rope, attn.v_dim, attn.rank
    rope_key, norm_eps, kv_eps = (rope, attn.rope_theta), eps_of(norm), eps_of(kv_norm)
    fixed, dtype = (hidden, heads, nope, rope, v, rank), plan.dtype

    def run(h: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor, step) -> torch.Tensor:
        cos, sin = step.tables(*rope_key)
        out = torch.empty(hidden, dtype=dtype)
        scratch = torch.empty(native.mla_scratch(hidden, heads, nope, rope, v, rank, step.width + 1, step.threads))
        kernel(h.data_ptr(), p_norm, norm_eps, p_qkva, p_kv_norm, kv_eps, cos, sin, latent.data_ptr(),
                               k_rope.data_ptr(), step.width, p_kv_b, attn.scaling, p_dense, *fixed, out.data_ptr(),
                               scratch.data_ptr(), step.threads)
        return out.view(1, 1, hidden)

    return run


@guard
def _moe(plan: RowPlan, mlp, norm) -> Callable:
    gate, kernel = mlp.gate, plan.kernel("kpop_moe_layer_row")
    if not native.routable(gate, plan.dtype):
        raise NotNative
    shared = mlp.shared_experts
    if shared is not None and swiglu_weights(shared) is None:
        raise NotNative
    stacks = stacks_of(mlp)
    for expert in stacks.experts:
        for name in ("gate_proj", "up_proj", "down_proj"):
            plan.watch(expert._modules[name])
    p_gu, p_down = plan.hold(stacks.gate_up, stacks.down)
    p_norm, p_gate, p_bias = plan.hold(plan.watch(norm), plan.watch(gate), plan.watch(gate, "expert_bias"))
    p_sgu, p_sdown, dense = None, None, 0
    if shared is not None:
        p_sgu = plan.packed(shared, "gate_up.weight", [shared.gate_proj, shared.up_proj])
        (p_sdown,) = plan.hold(plan.watch(shared.down_proj))
        dense = shared.down_proj.weight.shape[1]
    hidden, inner = stacks.down.shape[1], stacks.down.shape[2]
    route = (gate.weight.shape[0], gate.n_group, gate.topk_group, gate.top_k, gate.routed_scaling_factor)
    fixed = (p_norm, eps_of(norm), p_gate, p_bias, *route, p_gu, p_down, inner, p_sgu, p_sdown, dense, hidden)
    scratch_size, dtype = 2 * hidden + 3 * (gate.top_k * inner + dense), plan.dtype

    def run(h: torch.Tensor, step) -> torch.Tensor:
        out, scratch = torch.empty(hidden, dtype=dtype), torch.empty(scratch_size)
        kernel(h.data_ptr(), *fixed, out.data_ptr(), scratch.data_ptr(), step.threads)
        return out.view(1, 1, hidden)

    return run


@guard
def swiglu_block(plan: RowPlan, layer) -> Callable:
    """h -> h + FFN(RMSNorm(h)) for a layer whose `mlp` is a SiLU-gated MLP of plain linears
    (`post_attention_layernorm` before it): one native call (kpop_mlp_layer_row)."""
    mlp, norm, kernel = layer.mlp, layer.post_attention_layernorm, plan.kernel("kpop_mlp_layer_row")
    if swiglu_weights(mlp) is None:
        raise NotNative
    p_gu = plan.packed(mlp, "gate_up.weight", [mlp.gate_proj, mlp.up_proj])
    p_norm, p_down = plan.hold(plan.watch(norm), plan.watch(mlp.down_proj))
    hidden, width, norm_eps, dtype = mlp.down_proj.out_features, mlp.down_proj.in_features, eps_of(norm), plan.dtype

    def run(h: torch.Tensor, step) -> torch.Tensor:
        out, scratch = torch.empty(hidden, dtype=dtype), torch.empty(2 * hidden + 3 * width)
        kernel(h.data_ptr(), p_norm, norm_eps, p_gu, p_down, width, hidden, out.data_ptr(), scratch.data_ptr(),
               step.threads)
        return out.view(1, 1, hidden)

    return run


@guard
def norm_head(plan: RowPlan, norm, head) -> Callable:
    """h -> head(RMSNorm(h)) as logits [1, V] in the plan's dtype: one native call
    (kpop_norm_head_row); None for a head that is not a plain bias-free linear."""
    kernel = plan.kernel("kpop_norm_head_row")
    plain(head)
    p_norm, p_head = plan.hold(plan.watch(norm), plan.watch(head))
    vocab, hidden = head.weight.shape
    norm_eps, dtype = eps_of(norm), plan.dtype

    def run(h: torch.Tensor, step) -> torch.Tensor:
        out, scratch = torch.empty(1, vocab, dtype=dtype), torch.empty(hidden + vocab)
        kernel(h.data_ptr(), p_norm, norm_eps, p_head, vocab, hidden, out.data_ptr(), scratch.data_ptr(), step.threads)
        return out

    return run
