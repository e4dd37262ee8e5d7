"""Methods: turn a Gram matrix and/or task losses into task weights (see :class:`Weighting`).

``taskgrad.methods.get("cagrad", c=0.4)`` builds a method by name; ``available()`` lists them.
"""

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
    UndefinedMethodError,
    UPGrad,
    alpha_fair_weights,
)
from .aux_baselines import CosineGatedAux, OLAux, PCGradAux, PrimaryOnly, Sum
from .base import Weighting, check_losses
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
from .registry import available, get, register

__all__ = [
    "CAGrad", "DBMTL", "DWA", "FAMO", "IMTLG", "IMTLL", "MGDA", "MGDAUB", "RLW", "STCH",
    "AlignedMTL", "CosineGatedAux", "DualProj", "FairGrad", "GeneralizedMean", "GeometricMean",
    "GradNorm", "GradVac", "GradientNormalization", "InitialLossNormalization", "LogSum", "Mean",
    "NashMTL", "OLAux", "PCGrad", "PCGradAux", "PrimaryAux", "PrimaryOnly",
    "PriorLossNormalization", "RandomGradient", "Sum", "UPGrad", "UncertaintyWeighting",
    "UndefinedMethodError", "Weighting", "alpha_fair_weights", "available", "check_losses", "get",
    "register",
]
