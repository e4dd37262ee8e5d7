"""Per-block (per-layer or per-matrix) granularity for any Gram method: one Gram and one set of
weights per parameter block (LibMTL's GradVac granularity, for every Weighting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..base import Weighting
from ..gram._zoo_checks import check_int
from ..registry import register_method
from ._base import JacobianAggregator

__all__ = ["Blockwise", "parameter_blocks"]


def parameter_blocks(
    params: Sequence[Tensor], granularity: str = "matrix", module: torch.nn.Module | None = None
) -> list[int]:
    """Block sizes over the flattened ``params`` (in that order): "matrix" one block per tensor;
    "layer" one block per module that owns parameters directly (its weight and bias together,
    LibMTL's all_layer; needs ``module``), the parameters of one layer being adjacent in
    ``params``; "all" one block.
    """
    params = list(params)
    if granularity == "all":
        return [sum(p.numel() for p in params)]
    if granularity == "matrix":
        return [p.numel() for p in params]
    if granularity != "layer":
        raise ValueError(f"granularity must be 'all', 'layer' or 'matrix', got {granularity!r}.")
    if module is None:
        raise ValueError(
            "granularity='layer' needs the module that owns the parameters: pass module=model."
        )
    owner: dict[int, int] = {}
    for i, m in enumerate(module.modules()):
        for owned in m.parameters(recurse=False):
            owner[id(owned)] = i
    sizes: list[int] = []
    last: int | None = None
    for p in params:
        o = owner.get(id(p))
        if o is None:
            raise ValueError(
                "a parameter in params does not belong to module; pass the module that owns them "
                "all."
            )
        if o == last:
            sizes[-1] += p.numel()
        else:
            sizes.append(p.numel())
        last = o
    return sizes


@register_method(
    "blockwise",
    description=(
        "Blockwise: run a Gram method per parameter block (per layer or per matrix), default "
        "GradVac."
    ),
    paper=(
        "Wang et al., Gradient Vaccine, ICLR 2021 (per-layer granularity); LibMTL's "
        "GradVac_group_type"
    ),
    aliases=("Blockwise", "per-layer"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=True,
)
class Blockwise(JacobianAggregator):
    """Any Gram method at a finer granularity: the columns of J are split into blocks
    (``block_sizes``, e.g. from :func:`parameter_blocks`), each block b gets its own Gram
    G_b = J_b J_bᵀ and weights w_b = method(G_b, L) (one batched call, so a stateful method such
    as GradVac keeps one state per block), and d = [J_1ᵀw_1, …, J_Bᵀw_B].

    Per-layer Grams are not a function of the whole-model Gram, so this needs the Jacobian
    (:func:`taskgrad.backward` materializes it over the shared parameters; pass
    ``params=`` in the order the blocks were made from). ``block_sizes=None`` is one block (the
    inner method itself). ``method`` is a Weighting or a registered name (default "gradvac",
    built with ``generator``). LibMTL's GradVac (GradVac_group_type 1: all_layer, 2:
    all_matrix) draws one task order for all blocks, here each block draws its own; and its code
    updates the similarity EMA only on the visits that steer, ours (TorchJD's, the paper's) on
    every visit.
    """

    needs = frozenset({"jacobian", "losses"})

    def __init__(
        self,
        method: Weighting | str = "gradvac",
        block_sizes: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(method, str):
            from .. import registry

            kwargs: dict[str, Any] = {}
            if generator is not None and registry.lookup(method).random:
                kwargs["generator"] = generator
            method = registry.get(method, **kwargs)
        if not isinstance(method, Weighting) or "jacobian" in method.needs:
            raise TypeError(
                "method must be a Gram or loss Weighting (or its registered name), not a Jacobian "
                "aggregator."
            )
        self.method = method
        self.block_sizes = (
            None
            if block_sizes is None
            else [check_int("block_sizes[i]", b, low=1) for b in block_sizes]
        )

    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        J = jacobian
        sizes = self.block_sizes or [J.shape[1]]
        if sum(sizes) != J.shape[1]:
            raise ValueError(
                f"block_sizes add up to {sum(sizes)} but the Jacobian has {J.shape[1]} columns; "
                "build them from "
                "the same parameters, in the same order, as the Jacobian (taskgrad.backward(..., "
                "params=params))."
            )
        blocks = torch.split(J, sizes, dim=1)
        Jd = J.double() if J.device.type == "cpu" else J
        grams = torch.stack([b @ b.T for b in torch.split(Jd, sizes, dim=1)]).to(J.dtype)
        grams = 0.5 * (grams + grams.transpose(-1, -2))
        L = None if losses is None else losses.to(J.dtype).expand(len(sizes), -1)
        w = self.method(gram=grams if "gram" in self.method.needs else None, losses=L)
        return torch.cat([wb @ b for wb, b in zip(w, blocks, strict=True)])

    def reset(self) -> None:
        self.method.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.method.load_state_dict(state_dict["method"])
