"""Training logs people read: per-step weights, gradient cosines, κ(G), active constraints.

``with CSVLogger("run/log.csv", names=["seg", "depth"]) as log: log.log_step(t, result)`` for any
step result with ``.weights``/``.gram``/``.losses``; then ``report("run/log.csv", "run/plots")``
draws the heat map of gradient cosines over training and the weights over time.
"""

from .loggers import (
    CSVLogger,
    MemoryLogger,
    MultiLogger,
    TensorBoardLogger,
    TrainingLogger,
    read_csv_log,
    tensorboard_available,
)
from .plots import (
    NothingToPlotWarning,
    cosine_matrix,
    plot_conditioning,
    plot_cosine_heatmap,
    plot_losses,
    plot_weights,
    report,
)
from .stats import active_constraints, condition_number, gradient_cosines, step_scalars, task_names

__all__ = [
    "CSVLogger",
    "MemoryLogger",
    "MultiLogger",
    "NothingToPlotWarning",
    "TensorBoardLogger",
    "TrainingLogger",
    "active_constraints",
    "condition_number",
    "cosine_matrix",
    "gradient_cosines",
    "plot_conditioning",
    "plot_cosine_heatmap",
    "plot_losses",
    "plot_weights",
    "read_csv_log",
    "report",
    "step_scalars",
    "task_names",
    "tensorboard_available",
]
