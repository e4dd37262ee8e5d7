"""Sparse multi-task linear models with the scikit-learn API.

Estimators minimize f(XW + 1bᵀ) + α·Ω(W), f a mean loss over samples and tasks and Ω the
L2,1 norm Σ_j ‖W_j‖₂ (features shared by all tasks), the L1 norm, or a ridge term. The CPU
solver is block coordinate descent with working sets and gap-safe screening; ``device="cuda"``
uses an accelerated proximal gradient in torch. Both stop on the duality gap.
"""

from ._estimators import MultiTaskElasticNet, MultiTaskLasso, MultiTaskLogisticRegression
from ._path import (
    MultiTaskElasticNetCV,
    MultiTaskLassoCV,
    MultiTaskLogisticRegressionCV,
    Path,
    multitask_enet_path,
    multitask_lasso_path,
    multitask_logistic_path,
)

__all__ = [
    "MultiTaskElasticNet",
    "MultiTaskElasticNetCV",
    "MultiTaskLasso",
    "MultiTaskLassoCV",
    "MultiTaskLogisticRegression",
    "MultiTaskLogisticRegressionCV",
    "Path",
    "multitask_enet_path",
    "multitask_lasso_path",
    "multitask_logistic_path",
]
