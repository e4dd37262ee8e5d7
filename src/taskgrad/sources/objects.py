"""Gradient sources as small objects with one job: ``source.gram(losses, …) -> G`` (k×k).

=====================  ==========================================  ============================
source                 G                                           cost beyond a summed step
=====================  ==========================================  ============================
:class:`FullGram`      Σ_p J_p J_pᵀ over the shared parameters     one batched backward, memory
                       (blockwise, no stored Jacobian)             of one block k×numel(p)
:class:`JacobianGram`  J Jᵀ from the stored k×P Jacobian            k×P memory (chunkable)
:class:`Representation Σ_b ⟨∂Lᵢ/∂z_b, ∂Lⱼ/∂z_b⟩ at the features z   a backward through the heads
Gram`                  (recommended for encoder + heads)
:class:`SketchGram`    (JΩ)(JΩ)ᵀ/r, Ω ~ N(0, I) of r columns       r forward-mode JVPs
=====================  ==========================================  ============================

Every source returns G in float32 (float64 for float64 models), whatever autocast does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._stateful import Stateful
from ._graph import LossSet, as_loss_vector, check_params, check_reach, shared_parameters
from .blockwise import blockwise_gram
from .capture import TaskGrads, capture_features, task_gradients
from .gram import check_features, gram_of_capture, parameter_gram, representation_gram
from .sketch import module_loss_fn, sketch_jacobian

__all__ = [
    "FullGram",
    "GramSource",
    "JacobianGram",
    "ModuleLoss",
    "Part",
    "RepresentationGram",
    "SketchGram",
    "make_source",
]


@dataclass
class Part:
    """What one (micro-)batch contributes to a step.

    payload: flat numbers that add over micro-batches (scaled by c**source.payload_power for a
    loss factor c) and over processes; ``source.gram_of(payload, k, R)`` turns their sum into the
    Gram. None when no Gram is needed. grads: every task's gradient with respect to every
    parameter it reaches, when the source computed them anyway; None otherwise. update: when
    the source can give the step's gradient more cheaply than a weighted backward of the whole
    graph, ``update(v, own)`` returns (parameter, gradient of Σᵢ vᵢLᵢ, shared) triples (heads
    weighted by ``own`` instead of v when it is given), each gradient a new tensor that no one
    else holds (the caller may store it as ``.grad`` without a copy); None otherwise.
    """

    payload: Tensor | None
    grads: TaskGrads | None = None
    update: Callable[[Tensor, Tensor | None], list[tuple[Tensor, Tensor, bool]]] | None = None


class GramSource(Stateful, ABC):
    """Produces the k×k Gram matrix of the task gradients for given losses.

    Stateless sources inherit ``state_dict() == {}`` and their ``repr`` from
    :class:`~taskgrad._stateful.Stateful`.

    ``uses_graph``: True when G is computed from the losses' autograd graph (so it scales as
    s² when the losses are scaled by s, e.g. by a GradScaler); False for the sketch, which
    re-evaluates the losses through ``loss_fn``.
    """

    uses_graph: ClassVar[bool] = True

    @abstractmethod
    def gram(
        self,
        losses: Tensor,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
    ) -> Tensor:
        """G (k×k) for the k losses; raise ValueError naming what is missing."""

    #: how the payload scales when the losses are multiplied by c (c**payload_power)
    payload_power: ClassVar[int] = 1

    def part(
        self,
        losses: LossSet,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
        additive: bool = False,
        want_grads: bool = False,
        all_losses: LossSet | None = None,
    ) -> Part:
        """This batch's contribution for the tasks of ``losses`` (a view of ``all_losses``).

        ``additive``: the payload must add over processes (DDP), e.g. a Jacobian instead of its
        Gram. ``want_grads``: the caller can use per-task gradients instead of a weighted
        backward. ``scale``: a GradScaler's scale s; the backward runs on s·L and the payload is
        returned unscaled. Default: the payload is :meth:`gram` (not additive).
        """
        if additive:
            raise TypeError(
                f"{type(self).__name__} has no distributed form: its Gram neither adds over "
                "samples nor comes from a Jacobian that does. Use RepresentationGram, SketchGram, "
                "FullGram or JacobianGram."
            )
        return Part(
            self.gram(losses.vector, features=features, params=params, loss_fn=loss_fn).reshape(-1)
        )

    def gram_of(self, payload: Tensor, k: int, world: int = 1) -> Tensor:
        """The k×k Gram from the payload summed over ``world`` processes (and micro-batches)."""
        G = payload.reshape(k, k) / (world * world)
        return 0.5 * (G + G.T)

    #: the Gram is a function of the per-task gradients (then accumulation needs no payload)
    gram_from_grads: ClassVar[bool] = False

    def gram_of_grads(self, grads: TaskGrads) -> Tensor:
        """The k×k Gram from (accumulated) per-task gradients, for sources with
        ``gram_from_grads``.
        """
        raise TypeError(
            f"{type(self).__name__}'s Gram is not a function of the per-task parameter gradients."
        )

    def fix_directions(
        self, state: Tensor | None, losses: LossSet, *, loss_fn: Any = None, params: Any = None
    ) -> Tensor | None:
        """Make a micro-batch use the window's random directions: given the state kept from the
        first micro-batch (None at the first), set it and return what to keep (None: the source
        draws nothing).
        """
        return None


def _params_for(
    losses: Any, own: Sequence[Tensor] | None, given: Sequence[Tensor] | None
) -> list[Tensor]:
    if given is not None:
        return check_params(given)
    if own is not None:
        return check_params(own)
    if isinstance(losses, LossSet):
        return losses.shared_parameters()
    return shared_parameters(losses)


def _scaled(ls: LossSet, scale: float) -> Tensor:
    return ls.vector * scale if scale != 1.0 else ls.vector


def _jacobian(ls: LossSet, plist: list[Tensor], scale: float, strategy: str) -> Tensor:
    """J (k × P) over ``plist`` (zeros where a task does not reach), unscaled."""
    tg = task_gradients(ls, strategy=strategy)
    return _flat_rows(tg, plist)


def _task_grads_update(
    tg: TaskGrads, v: Tensor, own: Tensor | None
) -> list[tuple[Tensor, Tensor, bool]]:
    dirs = tg.direction(v, own)
    return [
        (p, d, len(t) >= 2 or tg.k == 1) for p, d, t in zip(tg.params, dirs, tg.tasks, strict=True)
    ]


def _flat_rows(tg: TaskGrads, plist: list[Tensor]) -> Tensor:
    blocks = []
    for p in plist:
        j = tg.index(p)
        if j < 0:
            blocks.append(torch.zeros(tg.k, p.numel(), dtype=p.dtype, device=p.device))
        else:
            blocks.append(tg.dense_rows(j))
    return torch.cat(blocks, dim=1)


class FullGram(GramSource):
    """G = Σ_p J_p J_pᵀ over the parameters (default: those shared by ≥ 2 losses).

    ``strategy``: "loop" (one backward per task, each through its own task's subgraph; the
    per-task gradients are kept, k × P_reached floats, and the update is written from them
    without a second backward: the fastest exact choice on CPUs), "batched" (one vmapped
    backward with each block J_p freed as soon as it is added: no k × P Jacobian is stored; a
    weighted backward follows; an op without a batching rule falls back to the loop) or
    "auto" (batched on CUDA, the loop elsewhere).
    """

    def __init__(self, params: Sequence[Tensor] | None = None, *, strategy: str = "auto") -> None:
        if strategy not in ("auto", "loop", "batched"):
            raise ValueError(f"strategy must be 'auto', 'loop' or 'batched', got {strategy!r}.")
        self.params = None if params is None else list(params)
        self.strategy = strategy

    gram_from_grads = True

    def gram_of_grads(self, grads: TaskGrads) -> Tensor:  # noqa: D102
        return grads.gram(check_params(self.params) if self.params is not None else grads.shared())

    def _strategy(self, ls: LossSet) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "batched" if ls.vector.is_cuda else "loop"

    def gram(  # noqa: D102
        self,
        losses: Sequence[Tensor] | Tensor | LossSet,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
    ) -> Tensor:
        ls = losses if isinstance(losses, LossSet) else LossSet(losses)
        plist = _params_for(ls, self.params, params)
        if self._strategy(ls) == "batched":
            return blockwise_gram(ls, plist)
        check_reach(ls, plist)
        return task_gradients(ls, strategy="loop").gram(plist)

    def part(
        self,
        losses: LossSet,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
        additive: bool = False,
        want_grads: bool = False,
        all_losses: LossSet | None = None,
    ) -> Part:  # noqa: D102
        plist = _params_for(all_losses or losses, self.params, params)
        check_reach(losses, plist)
        if self._strategy(losses) == "loop":
            tg = task_gradients(losses, strategy="loop")
            payload = _flat_rows(tg, plist).reshape(-1) if additive else tg.gram(plist).reshape(-1)
            if not want_grads:
                return Part(payload)
            return Part(payload, tg, update=lambda v, own: _task_grads_update(tg, v, own))
        if additive:
            return Part(_jacobian(losses, plist, scale, "batched").reshape(-1))
        G = blockwise_gram(losses if scale == 1.0 else [x * scale for x in losses.items], plist)
        return Part((G / (scale * scale)).reshape(-1))

    def gram_of(self, payload: Tensor, k: int, world: int = 1) -> Tensor:  # noqa: D102
        if payload.numel() == k * k and world == 1:
            G = payload.reshape(k, k)
        else:
            J = payload.reshape(k, -1) / world
            G = J @ J.T
        return 0.5 * (G + G.T)


class JacobianGram(GramSource):
    """G = J Jᵀ from the stored Jacobian (batched VJPs, chunked by ``max_jacobian_numel``)."""

    def __init__(
        self, params: Sequence[Tensor] | None = None, max_jacobian_numel: int | None = None
    ) -> None:
        self.params = None if params is None else list(params)
        self.max_jacobian_numel = max_jacobian_numel

    gram_from_grads = True

    def gram_of_grads(self, grads: TaskGrads) -> Tensor:  # noqa: D102
        return grads.gram(check_params(self.params) if self.params is not None else grads.shared())

    def gram(  # noqa: D102
        self,
        losses: Sequence[Tensor] | Tensor | LossSet,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
    ) -> Tensor:
        ls = losses if isinstance(losses, LossSet) else LossSet(losses)
        plist = _params_for(ls, self.params, params)
        return parameter_gram(ls, plist, max_jacobian_numel=self.max_jacobian_numel)

    def part(
        self,
        losses: LossSet,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
        additive: bool = False,
        want_grads: bool = False,
        all_losses: LossSet | None = None,
    ) -> Part:  # noqa: D102
        plist = _params_for(all_losses or losses, self.params, params)
        if additive:
            check_reach(losses, plist)
            return Part(_jacobian(losses, plist, scale, "batched").reshape(-1))
        src = losses if scale == 1.0 else [x * scale for x in losses.items]
        G = parameter_gram(src, plist, max_jacobian_numel=self.max_jacobian_numel)
        return Part((G / (scale * scale)).reshape(-1))

    def gram_of(self, payload: Tensor, k: int, world: int = 1) -> Tensor:  # noqa: D102
        return FullGram.gram_of(self, payload, k, world)  # type: ignore[arg-type]


class RepresentationGram(GramSource):
    """G_ij = Σ_b ⟨∂Lᵢ/∂z_b, ∂Lⱼ/∂z_b⟩ at the shared representation z (pass ``features=z``).

    Costs one backward through the heads (each head once) when every op reading z belongs to one
    task; a head whose first op is a Linear (an (n, d) feature, or (B, T, d) flattened by a view)
    gives its gradient at z as D Wᵀ-factors, so Gᵢⱼ = Σ (DᵢᵀDⱼ) ⊙ (WᵢWⱼᵀ) costs O(oᵢoⱼ(n + d))
    instead of O(n d) wherever that is cheaper (exact to rounding). The Gram adds over samples, so
    micro-batches add c²Gᵐ and processes add their Gʳ.
    """

    payload_power = 2

    def gram(  # noqa: D102
        self,
        losses: Sequence[Tensor] | Tensor | LossSet,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
    ) -> Tensor:
        if features is None:
            raise ValueError(
                "RepresentationGram needs the shared representation: pass features=z, the encoder "
                "output the task heads were computed from."
            )
        ls = losses if isinstance(losses, LossSet) else LossSet(losses)
        return representation_gram(ls, features)

    def part(
        self,
        losses: LossSet,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
        additive: bool = False,
        want_grads: bool = False,
        all_losses: LossSet | None = None,
    ) -> Part:  # noqa: D102
        if features is None:
            raise ValueError(
                "the representation source needs features=z, the tensor the task heads were "
                "computed from (under DDP with find_unused_parameters=True, capture it inside "
                "the module with taskgrad.distributed.FeatureHook: DDP's outputs are copies)."
            )
        if scale != 1.0:
            G = representation_gram([x * scale for x in losses.items], features) / (scale * scale)
            return Part(G.detach().reshape(-1))
        feats = check_features(features)
        cap = capture_features(losses, feats, with_heads=want_grads)
        G = gram_of_capture(cap, feats)
        return Part(G.detach().reshape(-1), update=cap.update if cap.heads is not None else None)


class ModuleLoss:
    """The k losses as a function of the module's parameters, for the sketch's JVPs:
    ``ModuleLoss(model, lambda out: [...k losses...], x)``; calling it with a dict of named
    parameters evaluates the losses with them (buffers cloned, see
    :func:`~taskgrad.sources.sketch.module_loss_fn`).
    """

    def __init__(
        self,
        module: nn.Module,
        losses_from_outputs: Callable[[Any], Any],
        *args: Any,
        **kwargs: Any,
    ):
        self.module = getattr(module, "_orig_mod", module)
        self._fn = module_loss_fn(module, losses_from_outputs, *args, **kwargs)

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        return self._fn(params)

    def named_parameters(self) -> dict[str, Tensor]:
        """The module's trainable parameters by name."""
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}


class SketchGram(GramSource):
    """Ĝ = (JΩ)(JΩ)ᵀ / r with Ω a P×r standard normal matrix: unbiased, E[Ĝ] = G, by r JVPs.

    Needs ``loss_fn``: a :class:`ModuleLoss` (or a callable of a name->tensor dict, then also
    ``params`` as a dict). The perturbed parameters are the shared ones (those reachable from
    ≥ 2 losses, matched by identity) unless ``param_names`` is given. The directions come from
    the source's own generator (seeded, checkpointed in :meth:`state_dict`).

    Accuracy: E‖Ĝ − G‖²_F = ((tr G)² + ‖G‖²_F)/r, i.e. a relative error near √((k + 1)/r) for
    tasks of similar gradient norms; ``benchmarks/sketch_error.py`` finds r ≈ 16k needed for a
    direction within a few degrees of the exact one. Constrained methods whose constraints are
    tight at the solution (:class:`~taskgrad.PrimaryAux`) lose their first-order guarantee under
    any Gram error: give them the parameter or representation source.
    """

    uses_graph = False
    payload_power = 1

    def __init__(
        self,
        r: int = 32,
        *,
        seed: int = 0,
        chunk: int | None = None,
        param_names: Sequence[str] | None = None,
    ):
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}.")
        self.r = r
        self.seed = seed
        self.chunk = chunk
        self.param_names = None if param_names is None else list(param_names)
        self._gen: torch.Generator | None = None
        self._pending_state: Tensor | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The source's generator on ``device`` (created from ``seed`` on first use)."""
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self.seed)
            if self._pending_state is not None:
                self._gen.set_state(self._pending_state)
                self._pending_state = None
        return self._gen

    def select(self, losses: Any, loss_fn: Any, params: Any) -> dict[str, Tensor]:
        """The named parameters the directions perturb."""
        shared_given = params if params is not None and not isinstance(params, Mapping) else None
        if params is not None and isinstance(params, Mapping):
            named = dict(params)
        elif hasattr(loss_fn, "named_parameters"):
            named = dict(loss_fn.named_parameters())
        else:
            raise ValueError(
                "SketchGram needs the named parameters: pass a ModuleLoss as loss_fn, or params "
                "as a dict."
            )
        if self.param_names is not None:
            missing = [n for n in self.param_names if n not in named]
            if missing:
                raise ValueError(
                    f"param_names {missing} are not parameters of the module; names are "
                    f"{list(named)[:5]}…"
                )
            return {n: named[n] for n in self.param_names}
        if shared_given is not None or (losses is not None and len(losses) > 1):
            shared = {
                id(p)
                for p in (shared_given if shared_given is not None else shared_parameters(losses))
            }
            sel = {n: p for n, p in named.items() if id(p) in shared}
            if sel:
                return sel
        return named

    def jacobian(
        self, losses: Sequence[Tensor] | Tensor | None, *, loss_fn: Any, params: Any = None
    ) -> Tensor:
        """JΩ (k × r) along the next r directions of the generator."""
        if loss_fn is None:
            raise ValueError(
                "SketchGram needs loss_fn, the losses as a function of the parameters: e.g. "
                "loss_fn=ModuleLoss(model, lambda out: [...k losses...], x)."
            )
        named = self.select(losses, loss_fn, params)
        device = next(iter(named.values())).device
        return sketch_jacobian(
            loss_fn, named, self.r, generator=self.generator(device), chunk=self.chunk
        )

    def gram(  # noqa: D102
        self,
        losses: Sequence[Tensor] | Tensor | None,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
    ) -> Tensor:
        L = as_loss_vector(losses) if losses is not None else None
        S = self.jacobian(losses, loss_fn=loss_fn, params=params)
        if L is not None and S.shape[0] != L.shape[0]:
            raise ValueError(f"loss_fn returns {S.shape[0]} losses but {L.shape[0]} were given.")
        G = S @ S.T / self.r
        return 0.5 * (G + G.T)

    def part(
        self,
        losses: LossSet,
        *,
        features: Any = None,
        params: Sequence[Tensor] | None = None,
        loss_fn: Any = None,
        scale: float = 1.0,
        additive: bool = False,
        want_grads: bool = False,
        all_losses: LossSet | None = None,
    ) -> Part:  # noqa: D102
        full = all_losses or losses
        S = self.jacobian(
            full.items if full.k > 1 else None, loss_fn=loss_fn, params=params
        ).detach()
        if S.shape[0] != full.k:
            raise ValueError(f"loss_fn returns {S.shape[0]} losses but {full.k} were given.")
        which = [full._which.index(w) for w in losses._which] if losses is not full else None
        if which is not None:
            S = S[which]
        return Part(S.reshape(-1))

    def fix_directions(  # noqa: D102
        self, state: Tensor | None, losses: LossSet, *, loss_fn: Any = None, params: Any = None
    ) -> Tensor | None:
        named = self.select(losses.items, loss_fn, params)
        gen = self.generator(next(iter(named.values())).device)
        if state is None:
            state = gen.get_state()
        gen.set_state(state)  # the same directions Ω for every micro-batch of the window
        return state

    def gram_of(self, payload: Tensor, k: int, world: int = 1) -> Tensor:  # noqa: D102
        S = payload.reshape(k, -1) / world
        G = S @ S.T / self.r
        return 0.5 * (G + G.T)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state = self._gen.get_state() if self._gen is not None else self._pending_state
        return {
            "seed": self.seed,
            "r": self.r,
            "generator": None if state is None else state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if state.get("r", self.r) != self.r:
            raise ValueError(f"checkpoint has r={state['r']} but this source has r={self.r}.")
        self.seed = state.get("seed", self.seed)
        self._gen = None
        self._pending_state = state.get("generator")


def make_source(source: str | GramSource, features_given: bool) -> GramSource:
    """Resolve a source name: "auto" (representation when features are given, else full),
    "full", "jacobian", "representation", "sketch" (r = 32).
    """
    if isinstance(source, GramSource):
        return source
    if source == "auto":
        return RepresentationGram() if features_given else FullGram()
    table: dict[str, Callable[[], GramSource]] = {
        "full": FullGram,
        "jacobian": JacobianGram,
        "representation": RepresentationGram,
        "sketch": SketchGram,
    }
    if source not in table:
        raise ValueError(
            f"unknown source {source!r}; choose one of 'auto', {', '.join(map(repr, table))} or "
            "pass a GramSource."
        )
    return table[source]()
