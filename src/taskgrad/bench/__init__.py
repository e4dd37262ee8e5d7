"""The benchmark harness: configs (TOML or YAML) → runs (with resume, LR schedules, a validation
split and best-validation model selection) → JSON/CSV → Δm tables and plots.

``taskgrad bench CONFIG...`` runs configs, ``taskgrad report DIR`` rebuilds tables and plots; the
config schema is documented in ``benchmarks/configs/README.md`` and :mod:`taskgrad.bench.config`.
"""

from .config import ExperimentConfig, RunConfig, load_config, parse_config
from .metrics import aggregate, delta_m
from .problems import Metric, Problem, get_problem, problems, register_problem
from .runner import OneTask, run, run_all
from .schedulers import build_scheduler
from .validation import Selector, carve_validation

__all__ = [
    "ExperimentConfig", "Metric", "OneTask", "Problem", "RunConfig", "Selector", "aggregate", "build_scheduler",
    "carve_validation", "delta_m", "get_problem", "load_config", "parse_config", "problems", "register_problem",
    "run", "run_all",
]
