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
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._stateful import Stateful
from ._graph import as_loss_vector, check_params, shared_parameters
from .blockwise import blockwise_gram
from .gram import parameter_gram, representation_gram
from .sketch import module_loss_fn, sketch_jacobian

__all__ = ["FullGram", "GramSource", "JacobianGram", "ModuleLoss", "RepresentationGram", "SketchGram", "make_source"]


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



def _params_for(losses: Any, own: Sequence[Tensor] | None, given: Sequence[Tensor] | None) -> list[Tensor]:
    if given is not None:
        return check_params(given)
    if own is not None:
        return check_params(own)
    return shared_parameters(losses)


class FullGram(GramSource):
    """G = Σ_p J_p J_pᵀ over the parameters (default: those shared by ≥ 2 losses), accumulated
    block by block during one batched backward; no k×P Jacobian is ever stored."""

    def __init__(self, params: Sequence[Tensor] | None = None) -> None:
        self.params = None if params is None else list(params)

    def gram(self, losses, *, features=None, params=None, loss_fn=None) -> Tensor:  # noqa: D102
        L = as_loss_vector(losses)
        return blockwise_gram(L, _params_for(losses, self.params, params))


class JacobianGram(GramSource):
    """G = J Jᵀ from the stored Jacobian (batched VJPs, chunked by ``max_jacobian_numel``)."""

    def __init__(self, params: Sequence[Tensor] | None = None, max_jacobian_numel: int | None = None) -> None:
        self.params = None if params is None else list(params)
        self.max_jacobian_numel = max_jacobian_numel

    def gram(self, losses, *, features=None, params=None, loss_fn=None) -> Tensor:  # noqa: D102
        L = as_loss_vector(losses)
        return parameter_gram(L, _params_for(losses, self.params, params), max_jacobian_numel=self.max_jacobian_numel)


class RepresentationGram(GramSource):
    """G_ij = Σ_b ⟨∂Lᵢ/∂z_b, ∂Lⱼ/∂z_b⟩ at the shared representation z (pass ``features=z``)."""

    def gram(self, losses, *, features=None, params=None, loss_fn=None) -> Tensor:  # noqa: D102
        if features is None:
            raise ValueError(
                "RepresentationGram needs the shared representation: pass features=z, the encoder "
                "output the task heads were computed from."
            )
        return representation_gram(losses, features)


class ModuleLoss:
    """The k losses as a function of the module's parameters, for the sketch's JVPs:
    ``ModuleLoss(model, lambda out: [...k losses...], x)``; calling it with a dict of named
    parameters evaluates the losses with them (buffers cloned, see
    :func:`~taskgrad.sources.sketch.module_loss_fn`)."""

    def __init__(self, module: nn.Module, losses_from_outputs: Callable[[Any], Any], *args: Any, **kwargs: Any):
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

    def __init__(self, r: int = 32, *, seed: int = 0, chunk: int | None = None, param_names: Sequence[str] | None = None):
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
            raise ValueError("SketchGram needs the named parameters: pass a ModuleLoss as loss_fn, or params as a dict.")
        if self.param_names is not None:
            missing = [n for n in self.param_names if n not in named]
            if missing:
                raise ValueError(f"param_names {missing} are not parameters of the module; names are {list(named)[:5]}…")
            return {n: named[n] for n in self.param_names}
        if shared_given is not None or (losses is not None and len(losses) > 1):
            shared = {id(p) for p in (shared_given if shared_given is not None else shared_parameters(losses))}
            sel = {n: p for n, p in named.items() if id(p) in shared}
            if sel:
                return sel
        return named

    def jacobian(self, losses: Tensor | None, *, loss_fn: Any, params: Any = None) -> Tensor:
        """JΩ (k × r) along the next r directions of the generator."""
        if loss_fn is None:
            raise ValueError(
                "SketchGram needs loss_fn, the losses as a function of the parameters: e.g. "
                "loss_fn=ModuleLoss(model, lambda out: [...k losses...], x)."
            )
        named = self.select(losses, loss_fn, params)
        device = next(iter(named.values())).device
        return sketch_jacobian(loss_fn, named, self.r, generator=self.generator(device), chunk=self.chunk)

    def gram(self, losses, *, features=None, params=None, loss_fn=None) -> Tensor:  # noqa: D102
        L = as_loss_vector(losses) if losses is not None else None
        S = self.jacobian(losses, loss_fn=loss_fn, params=params)
        if L is not None and S.shape[0] != L.shape[0]:
            raise ValueError(f"loss_fn returns {S.shape[0]} losses but {L.shape[0]} were given.")
        G = S @ S.T / self.r
        return 0.5 * (G + G.T)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state = self._gen.get_state() if self._gen is not None else self._pending_state
        return {"seed": self.seed, "r": self.r, "generator": None if state is None else state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if state.get("r", self.r) != self.r:
            raise ValueError(f"checkpoint has r={state['r']} but this source has r={self.r}.")
        self.seed = state.get("seed", self.seed)
        self._gen = None
        self._pending_state = state.get("generator")


def make_source(source: str | GramSource, features_given: bool) -> GramSource:
    """Resolve a source name: "auto" (representation when features are given, else full),
    "full", "jacobian", "representation", "sketch" (r = 32)."""
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
        raise ValueError(f"unknown source {source!r}; choose one of 'auto', {', '.join(map(repr, table))} or pass a GramSource.")
    return table[source]()
