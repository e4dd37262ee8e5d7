"""The benchmark harness: configs (TOML or YAML) → runs (with resume, LR schedules, a validation
split and best-validation model selection) → JSON/CSV → Δm tables and plots.

``taskgrad bench CONFIG...`` runs configs, ``taskgrad report DIR`` rebuilds tables and plots; the
config schema is documented in ``benchmarks/configs/README.md`` and :mod:`taskgrad.bench.config`.
Modules: :mod:`.problem` (the Problem and Metric interface), :mod:`.registry` (problems by name),
:mod:`.problems` (one module per data set), :mod:`.config`, :mod:`.runner` (one training run),
:mod:`.toy` (the CAGrad toy), :mod:`.report`, :mod:`.metrics`, :mod:`.schedulers`,
:mod:`.validation`.
"""

from .config import ExperimentConfig, RunConfig, load_config, parse_config
from .methods import OneTask, make_method
from .metrics import aggregate, delta_m
from .problem import Metric, Problem
from .registry import available_problems, get_problem, register_problem
from .runner import run, run_all
from .schedulers import build_scheduler
from .validation import Selector, carve_validation

__all__ = [
    "ExperimentConfig",
    "Metric",
    "OneTask",
    "Problem",
    "RunConfig",
    "Selector",
    "aggregate",
    "available_problems",
    "build_scheduler",
    "carve_validation",
    "delta_m",
    "get_problem",
    "load_config",
    "make_method",
    "parse_config",
    "register_problem",
    "run",
    "run_all",
]
