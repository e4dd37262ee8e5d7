"""Multi-task architectures as plain ``nn.Module``s, each exposing what the gradient sources need.

Every model maps an input x to a :class:`MultiTaskOutput`: ``preds`` (one prediction per task),
``features`` (what to pass as ``taskgrad.backward(..., features=...)``: a tensor, or a list of
tensors, that every task's loss depends on, so that the representation Gram
G_ij = Σ ⟨∂Lᵢ/∂z, ∂Lⱼ/∂z⟩ is defined) and ``task_features`` (the input of each task's head).
Where the Gram is taken, per architecture:

* :class:`HardParameterSharing`: the encoder's output z = f(x), which every head reads.
* :class:`CrossStitch`: the outputs of every task's column at the last layer, before the last
  cross-stitch unit mixes them (each head reads a mixture of all of them).
* :class:`MTAN`: the shared backbone's last-stage output, which every task's last attention
  module masks. Gradients that reach the backbone through the earlier attention modules are not
  in this Gram; the full-parameter source covers them.
* :class:`MMoE`, :class:`DSelectK`: the experts' outputs, stacked (E, B, d). The per-task
  mixtures (``task_features``) are gated per task, so one task's loss does not depend on another
  task's mixture and their Gram would be diagonal: the experts are the last tensors shared by
  all tasks.
* :class:`PLE` (and :class:`CGC`, its one-layer form): the shared experts' outputs of the last
  extraction layer, stacked (S, B, d): the task-specific experts feed one task only.

The gates' own parameters sit after the experts, so each gate sees only its own task's gradient,
as task-specific heads do.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

__all__ = [
    "CGC",
    "MTAN",
    "PLE",
    "TABULAR_ARCHITECTURES",
    "CrossStitch",
    "DSelectK",
    "FeaturesAndOutputs",
    "HardParameterSharing",
    "MMoE",
    "MultiTaskOutput",
    "mlp",
    "tabular_multitask",
]


@dataclass
class MultiTaskOutput:
    """What a multi-task model returns.

    preds: {task: prediction}. features: the tensor(s) every task's loss depends on, for
    ``taskgrad.backward(losses, features=out.features)`` (see the module docstring for where
    each architecture takes it). task_features: {task: the input of that task's head}.
    """

    preds: dict[str, Tensor]
    features: Tensor | list[Tensor]
    task_features: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, task: str) -> Tensor:
        return self.preds[task]

    @property
    def tasks(self) -> list[str]:
        return list(self.preds)


def mlp(sizes: Sequence[int], *, last_activation: bool = True) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and after the last if asked)."""
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, got {list(sizes)}.")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _heads(heads: Mapping[str, nn.Module]) -> nn.ModuleDict:
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError("heads must be a non-empty dict {task name: nn.Module}.")
    for name, head in heads.items():
        if not isinstance(head, nn.Module):
            raise TypeError(f"heads[{name!r}] is a {type(head).__name__}, not an nn.Module.")
    return nn.ModuleDict(dict(heads))


def _check_count(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}.")
    return value


class HardParameterSharing(nn.Module):
    """ŷ_t = head_t(f(x)): one shared encoder f, one head per task (Caruana 1997)."""

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = _heads(heads)

    def forward(self, x: Tensor) -> MultiTaskOutput:
        z = self.encoder(x)
        return MultiTaskOutput(
            {t: h(z) for t, h in self.heads.items()}, z, {t: z for t in self.heads}
        )


class CrossStitch(nn.Module):
    """Cross-stitch networks (Misra et al., 2016): one column of ``layers`` per task; after each
    layer l the columns' outputs are mixed, h̃_t = Σ_s α^l_ts h_s, with learned α^l (T × T),
    initialized to ``self_weight`` on the diagonal and (1 − self_weight)/(T − 1) elsewhere.

    ``layers``: the layers of one column (copied for every task); all columns' outputs at a layer
    must have the same shape. Representation: the columns' last-layer outputs (a list).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        heads: Mapping[str, nn.Module],
        *,
        self_weight: float = 0.9,
    ) -> None:
        super().__init__()
        self.heads = _heads(heads)
        tasks = list(self.heads)
        if not layers:
            raise ValueError("layers must hold at least one nn.Module (the layers of one column).")
        if not 0.0 < self_weight <= 1.0:
            raise ValueError(f"self_weight must be in (0, 1], got {self_weight!r}.")
        self.columns = nn.ModuleDict({t: nn.ModuleList(copy.deepcopy(list(layers))) for t in tasks})
        T = len(tasks)
        off = (1.0 - self_weight) / (T - 1) if T > 1 else 0.0
        init = torch.full((T, T), off) + (self_weight - off) * torch.eye(T)
        self.alpha = nn.Parameter(init.unsqueeze(0).repeat(len(layers), 1, 1))  # (L, T, T)

    def forward(self, x: Tensor) -> MultiTaskOutput:
        tasks = list(self.heads)
        hs = [x for _ in tasks]
        last: list[Tensor] = []
        for layer in range(self.alpha.shape[0]):
            outs = [
                cast(nn.ModuleList, self.columns[t])[layer](h)
                for t, h in zip(tasks, hs, strict=True)
            ]
            stacked = torch.stack(outs)  # (T, B, ...)
            mixed = torch.einsum("ts,s...->t...", self.alpha[layer].to(stacked.dtype), stacked)
            hs = list(mixed.unbind(0))
            last = outs
        return MultiTaskOutput(
            {t: self.heads[t](h) for t, h in zip(tasks, hs, strict=True)},
            last,
            dict(zip(tasks, hs, strict=True)),
        )


def _channel_linear(c_in: int, c_out: int, image: bool) -> nn.Module:
    return nn.Conv2d(c_in, c_out, 1) if image else nn.Linear(c_in, c_out)


class _Attention(nn.Module):
    """m = σ(W₂ relu(W₁ [f; a])) over channels, a the task's previous attended features mapped to
    f's channels (and pooled to its spatial size); returns m ⊙ f.
    """

    def __init__(self, c: int, c_prev: int | None, image: bool) -> None:
        super().__init__()
        self.image = image
        self.prev = None if c_prev is None else _channel_linear(c_prev, c, image)
        c_in = c if c_prev is None else 2 * c
        self.mask = nn.Sequential(
            _channel_linear(c_in, c, image), nn.ReLU(), _channel_linear(c, c, image), nn.Sigmoid()
        )

    def forward(self, f: Tensor, prev: Tensor | None) -> Tensor:
        u = f
        if self.prev is not None and prev is not None:
            p = prev
            if self.image and p.shape[-2:] != f.shape[-2:]:
                p = nn.functional.adaptive_avg_pool2d(p, (f.shape[-2], f.shape[-1]))
            u = torch.cat([f, self.prev(p)], dim=1)
        return self.mask(u) * f


class MTAN(nn.Module):
    """Multi-Task Attention Network (Liu et al., 2019): a shared backbone of ``blocks`` with
    outputs f_1..f_L of ``channels`` c_1..c_L, and per task an attention module per block,
    a_t^l = σ(g_t^l([f_l; a_t^{l−1}])) ⊙ f_l (channel-wise masks, 1×1 convolutions for 4-D
    features, linear maps for 2-D ones); head_t reads a_t^L. Representation: f_L.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        channels: Sequence[int],
        heads: Mapping[str, nn.Module],
        *,
        image: bool = True,
    ) -> None:
        super().__init__()
        self.heads = _heads(heads)
        if not blocks or len(blocks) != len(channels):
            raise ValueError(
                f"MTAN needs one channel count per block: {len(blocks)} blocks, {len(channels)} "
                "channels."
            )
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    _Attention(c, None if i == 0 else channels[i - 1], image)
                    for i, c in enumerate(channels)
                )
                for t in self.heads
            }
        )

    def forward(self, x: Tensor) -> MultiTaskOutput:
        feats, h = [], x
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        attended: dict[str, Tensor] = {}
        for t, modules in self.attention.items():
            a = None
            for f, att in zip(feats, cast(nn.ModuleList, modules), strict=True):
                a = att(f, a)
            attended[t] = cast(Tensor, a)  # blocks is not empty: a is the last block's output
        return MultiTaskOutput(
            {t: self.heads[t](attended[t]) for t in self.heads}, feats[-1], attended
        )


def _gate_input(x: Tensor) -> Tensor:
    return x.flatten(1)


def _mixture_of_experts(
    x: Tensor,
    experts: nn.ModuleList,
    gate_weights: Callable[[Tensor], dict[str, Tensor]],
    heads: nn.ModuleDict,
) -> MultiTaskOutput:
    """Each task's head reads Σₑ wₑ·expertₑ(x), w (B, E) its gate's weights; the features are
    the experts' outputs stacked (E, B, d) and each task's head input its mixture.
    """
    E = torch.stack([e(x) for e in experts])  # (E, B, d)
    mixed = {
        t: torch.einsum("be,eb...->b...", w.to(E.dtype), E) for t, w in gate_weights(x).items()
    }
    return MultiTaskOutput({t: heads[t](h) for t, h in mixed.items()}, E, mixed)


class MMoE(nn.Module):
    """Multi-gate Mixture-of-Experts (Ma et al., 2018): experts e_1..e_E shared by all tasks, a
    softmax gate per task g_t(x) = softmax(W_t x), and h_t = Σ_e g_t,e(x) e_e(x) read by head_t.

    ``make_expert()`` builds one expert (called E times); ``gate_in`` is the flattened input size.
    Representation: the experts' outputs stacked, (E, B, d).
    """

    def __init__(
        self,
        make_expert: Callable[[], nn.Module],
        n_experts: int,
        gate_in: int,
        heads: Mapping[str, nn.Module],
    ) -> None:
        super().__init__()
        self.heads = _heads(heads)
        _check_count("n_experts", n_experts)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(gate_in, n_experts) for t in self.heads})

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """{task: (B, E) softmax weights over the experts}."""
        return {t: torch.softmax(g(_gate_input(x)), dim=-1) for t, g in self.gates.items()}

    def forward(self, x: Tensor) -> MultiTaskOutput:
        return _mixture_of_experts(x, self.experts, self.gate_weights, self.heads)


class _ExtractionLayer(nn.Module):
    """One CGC layer: shared experts, task experts, a gate per task over [its experts; shared]
    and (below the top layer) a shared gate over all experts.
    """

    def __init__(
        self,
        make_expert: Callable[[int], nn.Module],
        d_in: int,
        tasks: list[str],
        n_shared: int,
        n_specific: int,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.shared = nn.ModuleList(make_expert(d_in) for _ in range(n_shared))
        self.specific = nn.ModuleDict(
            {t: nn.ModuleList(make_expert(d_in) for _ in range(n_specific)) for t in tasks}
        )
        self.gates = nn.ModuleDict({t: nn.Linear(d_in, n_specific + n_shared) for t in tasks})
        self.shared_gate = (
            nn.Linear(d_in, len(tasks) * n_specific + n_shared) if shared_gate else None
        )

    def forward(
        self, task_in: dict[str, Tensor], shared_in: Tensor
    ) -> tuple[dict[str, Tensor], Tensor | None, Tensor]:
        S = torch.stack([e(shared_in) for e in self.shared])  # (S, B, d)
        spec = {
            t: torch.stack([e(task_in[t]) for e in cast(nn.ModuleList, self.specific[t])])
            for t in self.tasks
        }
        out = {}
        for t in self.tasks:
            w = torch.softmax(self.gates[t](_gate_input(task_in[t])), dim=-1)
            out[t] = torch.einsum("be,eb...->b...", w.to(S.dtype), torch.cat([spec[t], S]))
        shared_out = None
        if self.shared_gate is not None:
            w = torch.softmax(self.shared_gate(_gate_input(shared_in)), dim=-1)
            every = torch.cat([*(spec[t] for t in self.tasks), S])
            shared_out = torch.einsum("be,eb...->b...", w.to(S.dtype), every)
        return out, shared_out, S


def _with_output_size(
    make: Callable[[int, int], nn.Module], d_out: int
) -> Callable[[int], nn.Module]:
    """d_in ↦ make(d_in, d_out): the expert factory of one extraction layer."""
    return lambda d_in: make(d_in, d_out)


class PLE(nn.Module):
    """Progressive Layered Extraction (Tang et al., 2020): ``len(dims) − 1`` extraction layers;
    layer l has ``n_shared`` shared and ``n_specific`` per-task experts mapping d_l → d_{l+1}
    (``make_expert(d_in, d_out)``, default a Linear + ReLU), a softmax gate per task over its own
    and the shared experts, and below the top a shared gate over all experts. Head_t reads its
    gated mixture of the top layer. Representation: the top layer's shared experts' outputs,
    stacked (S, B, d). ``dims[0]`` is the (flattened) input size.
    """

    def __init__(
        self,
        dims: Sequence[int],
        heads: Mapping[str, nn.Module],
        *,
        n_shared: int = 1,
        n_specific: int = 1,
        make_expert: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.heads = _heads(heads)
        if len(dims) < 2:
            raise ValueError(
                "dims must hold the input size and at least one expert output size, got "
                f"{list(dims)}."
            )
        _check_count("n_shared", n_shared)
        _check_count("n_specific", n_specific, low=0)
        make = make_expert or (lambda a, b: nn.Sequential(nn.Linear(a, b), nn.ReLU()))
        tasks = list(self.heads)
        n_layers = len(dims) - 1
        self.layers = nn.ModuleList(
            _ExtractionLayer(
                _with_output_size(make, dims[i + 1]),
                dims[i],
                tasks,
                n_shared,
                n_specific,
                shared_gate=i < n_layers - 1,
            )
            for i in range(n_layers)
        )

    def forward(self, x: Tensor) -> MultiTaskOutput:
        x = _gate_input(x)
        task_in = {t: x for t in self.heads}
        shared_in: Tensor | None = x
        S = x
        for layer in self.layers:
            assert shared_in is not None
            task_in, shared_in, S = layer(task_in, shared_in)
        return MultiTaskOutput({t: self.heads[t](h) for t, h in task_in.items()}, S, task_in)


class CGC(PLE):
    """Customized Gate Control (Tang et al., 2020): :class:`PLE` with one extraction layer,
    experts mapping ``d_in`` → ``d_out``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        heads: Mapping[str, nn.Module],
        *,
        n_shared: int = 1,
        n_specific: int = 1,
        make_expert: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__(
            [d_in, d_out], heads, n_shared=n_shared, n_specific=n_specific, make_expert=make_expert
        )


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """S(t) = 0 for t ≤ −γ/2, 1 for t ≥ γ/2, −2t³/γ³ + 3t/(2γ) + 1/2 between (C¹, exactly 0/1
    outside).
    """
    inner = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(
        t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner)
    )


class DSelectK(nn.Module):
    """DSelect-k mixture of experts (Hazimeh et al., 2021): per task, k selectors each pick one of
    the E experts through m = ⌈log₂ E⌉ smooth-step "bits": r_i(e) = Π_j S(z_ij) if bit j of e is
    1 else 1 − S(z_ij); the gate is Σ_i softmax(w)_i r_i, exactly k-sparse once every S(z_ij) is
    0 or 1. Static gates (z, w learned per task) or per-example gates (``per_example=True``: z, w
    linear in the flattened input, size ``gate_in``). With E not a power of two, code e selects
    expert e mod E (the gate still sums to 1 and stays k-sparse). Representation: the experts'
    outputs stacked, (E, B, d).
    """

    codes: Tensor  # (2^m, m) buffer
    fold: Tensor  # (2^m,) buffer
    z: nn.ModuleDict | nn.ParameterDict  # per task: linear maps (per example) or parameters
    w: nn.ModuleDict | nn.ParameterDict

    def __init__(
        self,
        make_expert: Callable[[], nn.Module],
        n_experts: int,
        k: int,
        heads: Mapping[str, nn.Module],
        *,
        gamma: float = 1.0,
        per_example: bool = False,
        gate_in: int | None = None,
    ) -> None:
        super().__init__()
        self.heads = _heads(heads)
        _check_count("n_experts", n_experts)
        _check_count("k", k)
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}.")
        if per_example and gate_in is None:
            raise ValueError("per_example=True needs gate_in, the flattened input size.")
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.n_experts, self.k, self.gamma, self.per_example = n_experts, k, gamma, per_example
        self.m = max(1, math.ceil(math.log2(n_experts)))
        codes = torch.tensor(
            [[(e >> j) & 1 for j in range(self.m)] for e in range(2**self.m)], dtype=torch.float32
        )
        self.register_buffer("codes", codes)  # (2^m, m): the binary code of each expert
        self.register_buffer("fold", torch.arange(2**self.m) % n_experts)  # code → expert
        if per_example:
            assert gate_in is not None
            self.z = nn.ModuleDict({t: nn.Linear(gate_in, k * self.m) for t in self.heads})
            self.w = nn.ModuleDict({t: nn.Linear(gate_in, k) for t in self.heads})
        else:
            g = torch.Generator().manual_seed(0)
            self.z = nn.ParameterDict(
                {
                    t: nn.Parameter((torch.rand(k, self.m, generator=g) - 0.5) * gamma)
                    for t in self.heads
                }
            )
            self.w = nn.ParameterDict({t: nn.Parameter(torch.zeros(k)) for t in self.heads})

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """{task: (B, E) weights over the experts}, each row summing to 1."""
        B = x.shape[0]
        out = {}
        for t in self.heads:
            if self.per_example:
                z = cast(nn.Module, self.z[t])(_gate_input(x)).view(B, self.k, self.m)
                w = cast(nn.Module, self.w[t])(_gate_input(x))
            else:
                z = cast(Tensor, self.z[t]).unsqueeze(0).expand(B, -1, -1)
                w = cast(Tensor, self.w[t]).unsqueeze(0).expand(B, -1)
            s = smooth_step(z, self.gamma).unsqueeze(2)  # (B, k, 1, m)
            c = self.codes.to(s.dtype)  # (2^m, m)
            r = torch.prod(c * s + (1 - c) * (1 - s), dim=-1)  # (B, k, 2^m): selector i on code e
            gate = torch.einsum(
                "bk,bke->be", torch.softmax(w, dim=-1), r
            )  # (B, 2^m), rows sum to 1
            if self.n_experts < 2**self.m:  # code e selects expert e mod E
                folded = gate.new_zeros(B, self.n_experts)
                gate = folded.index_add(1, self.fold.to(gate.device), gate)
            out[t] = gate
        return out

    def forward(self, x: Tensor) -> MultiTaskOutput:
        return _mixture_of_experts(x, self.experts, self.gate_weights, self.heads)


class FeaturesAndOutputs(nn.Module):
    """Adapts a model returning a :class:`MultiTaskOutput` to the benchmark harness's contract:
    ``forward(x) -> (features, [prediction of each task, in the order of the heads])``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor | list[Tensor], list[Tensor]]:
        out = self.model(x)
        return out.features, [out.preds[t] for t in out.tasks]


#: the architectures :func:`tabular_multitask` builds
TABULAR_ARCHITECTURES = ("shared", "cross_stitch", "mtan", "mmoe", "cgc", "ple", "dselect_k")


def tabular_multitask(
    architecture: str,
    d_in: int,
    hidden: Sequence[int],
    outs: Sequence[int],
    *,
    n_experts: int = 4,
    n_shared: int = 2,
    n_specific: int = 1,
    k: int = 2,
) -> nn.Module:
    """One of :data:`TABULAR_ARCHITECTURES` on flat inputs of size ``d_in``, as the benchmark
    harness expects it (:class:`FeaturesAndOutputs`): the shared part (encoder, columns, backbone
    or each expert) is an MLP of widths ``hidden`` (Linear + ReLU), head t a Linear to ``outs[t]``.

    ``n_experts`` (MMoE, DSelect-k), ``n_shared``/``n_specific`` (CGC, PLE: experts per layer; PLE
    has one extraction layer per entry of ``hidden``) and ``k`` (DSelect-k's selectors, per-example
    gates) size the gated models.
    """
    hidden = list(hidden)
    if not hidden:
        raise ValueError("hidden must hold at least one width.")
    heads = {f"task{i}": nn.Linear(hidden[-1], o) for i, o in enumerate(outs)}
    dims = [d_in, *hidden]
    layers = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in itertools.pairwise(dims)]

    def expert() -> nn.Module:
        return mlp(dims)

    if architecture == "shared":
        model: nn.Module = HardParameterSharing(nn.Sequential(*layers), heads)
    elif architecture == "cross_stitch":
        model = CrossStitch(layers, heads)
    elif architecture == "mtan":
        model = MTAN(layers, hidden, heads, image=False)
    elif architecture == "mmoe":
        model = MMoE(expert, n_experts, d_in, heads)
    elif architecture == "cgc":
        model = CGC(
            d_in,
            hidden[-1],
            heads,
            n_shared=n_shared,
            n_specific=n_specific,
            make_expert=lambda a, b: mlp([a, *hidden[:-1], b]),
        )
    elif architecture == "ple":
        model = PLE(dims, heads, n_shared=n_shared, n_specific=n_specific)
    elif architecture == "dselect_k":
        model = DSelectK(expert, n_experts, k, heads, per_example=True, gate_in=d_in)
    else:
        raise ValueError(
            f"architecture must be one of {', '.join(TABULAR_ARCHITECTURES)}, got {architecture!r}."
        )
    return FeaturesAndOutputs(model)
