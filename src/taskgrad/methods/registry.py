"""One way to name methods: ``get("cagrad", c=0.4)`` and ``available()`` (name -> description)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .aggregators import (
    CAGrad,
    DBMTL,
    AlignedMTL,
    DualProj,
    FairGrad,
    GradVac,
    IMTLG,
    MGDAUB,
    NashMTL,
    PCGrad,
    RandomGradient,
    UPGrad,
)
from .aux_baselines import CosineGatedAux, OLAux, PCGradAux, PrimaryOnly, Sum
from .base import Weighting
from .core import MGDA, Mean, PrimaryAux
from .loss_weightings import (
    DWA,
    FAMO,
    RLW,
    STCH,
    GeneralizedMean,
    GeometricMean,
    GradNorm,
    GradientNormalization,
    IMTLL,
    InitialLossNormalization,
    LogSum,
    PriorLossNormalization,
    UncertaintyWeighting,
)

__all__ = ["available", "get", "register"]

_REGISTRY: dict[str, tuple[Callable[..., Weighting], str]] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def register(name: str, factory: Callable[..., Weighting], description: str, *, overwrite: bool = False) -> None:
    """Register ``factory`` (a Weighting class or a function returning one) under ``name``."""
    key = _key(name)
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"a method named {key!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[key] = (factory, description)


def get(name: str, **kwargs: Any) -> Weighting:
    """A new instance of the method registered as ``name`` (case and '-'/'_' insensitive)."""
    key = _key(name)
    if key not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; taskgrad.methods.available() lists them: {', '.join(sorted(_REGISTRY))}.")
    factory, _ = _REGISTRY[key]
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise TypeError(f"method {key!r} does not accept {sorted(kwargs)}: {e}") from e


def available() -> dict[str, str]:
    """{name: one-line description} of every registered method, sorted by name."""
    return {k: _REGISTRY[k][1] for k in sorted(_REGISTRY)}


for _name, _factory, _desc in [
    # gradient aggregators
    ("mean", Mean, "Equal weights 1/k: the gradient of the mean loss."),
    ("mgda", MGDA, "MGDA: min-norm point of the convex hull of the task gradients (exact)."),
    ("mgda-ub", MGDAUB, "MGDA on normalized gradients (l2, loss, loss+l2) as in Sener & Koltun 2018."),
    ("pcgrad", PCGrad, "PCGrad: project conflicting gradients off each other in random order."),
    ("gradvac", GradVac, "Gradient Vaccine: steer pairwise cosines to an EMA target."),
    ("cagrad", CAGrad, "CAGrad: best worst-task improvement within a ball around the mean gradient (exact)."),
    ("imtl-g", IMTLG, "IMTL-G: equal projections of the update on every unit task gradient."),
    ("nash-mtl", NashMTL, "Nash-MTL: Nash bargaining solution G a = 1/a (exact Newton solve)."),
    ("aligned-mtl", AlignedMTL, "Aligned-MTL: align the gradients' principal components (condition number 1)."),
    ("upgrad", UPGrad, "UPGrad: sum of each gradient projected onto the dual cone of all gradients."),
    ("dualproj", DualProj, "DualProj: the mean gradient projected onto the dual cone of the gradients."),
    ("fairgrad", FairGrad, "FairGrad: alpha-fair allocation (G w)_i = w_i^(-1/alpha) (exact Newton solve)."),
    ("db-mtl", DBMTL, "DB-MTL gradient-magnitude step: log-loss gradients rescaled to the largest norm."),
    ("random", RandomGradient, "Random gradient weighting: softmax of Gaussian draws."),
    ("gradient-normalization", GradientNormalization, "Gradient-norm normalization: w_i = 1/||g_i|| (Gram diagonal)."),
    # loss-based weightings
    ("rlw", RLW, "Random Loss Weighting: softmax of Gaussian draws, no Gram needed."),
    ("log-sum", LogSum, "Sum of log losses: w_i = 1/L_i."),
    ("geometric-mean", GeometricMean, "Geometric mean of the losses: w_i = GM/(k L_i)."),
    ("generalized-mean", GeneralizedMean, "Power mean of the losses with exponent gamma."),
    ("initial-loss", InitialLossNormalization, "Normalize each loss by its value at the first step."),
    ("prior-loss", PriorLossNormalization, "Normalize each loss by a given prior (reference) loss."),
    ("uncertainty", UncertaintyWeighting, "Uncertainty Weighting (Kendall 2018), learned log-variances."),
    ("dwa", DWA, "Dynamic Weight Average: softmax of loss descent rates."),
    ("gradnorm", GradNorm, "GradNorm: learned weights balancing gradient norms and training rates."),
    ("famo", FAMO, "FAMO: fast adaptive multitask optimization from loss decreases."),
    ("stch", STCH, "Smooth Tchebycheff scalarization: smooth max of weighted losses."),
    ("imtl-l", IMTLL, "IMTL-L: learned loss scales e^s with -s regularizer."),
    # primary/auxiliary
    ("primary-aux", PrimaryAux, "Exact primary/auxiliary projection: closest to g0 raising no auxiliary loss."),
    ("primary-only", PrimaryOnly, "Primary task only: w = (1, 0, ..., 0)."),
    ("sum", Sum, "Plain sum of the losses: w = 1."),
    ("cosine-gated", CosineGatedAux, "Auxiliaries kept when cos(g0, g_i) > 0 (Du et al. 2018, unweighted)."),
    ("cosine-weighted", lambda **kw: CosineGatedAux(weighted=True, **kw), "Auxiliaries weighted by max(0, cos(g0, g_i)) (Du et al. 2018)."),
    ("pcgrad-aux", PCGradAux, "PCGrad on auxiliaries only: project a conflicting auxiliary off the primary."),
    ("ol-aux", OLAux, "OL-AUX-style online auxiliary weights from <g0, g_i>."),
]:
    register(_name, _factory, _desc)
