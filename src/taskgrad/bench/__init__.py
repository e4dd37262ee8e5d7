"""The benchmark harness: configs → runs (with resume) → JSON/CSV → Δm tables and plots.

``taskgrad bench CONFIG...`` runs configs, ``taskgrad report DIR`` rebuilds tables and plots.
"""

from .config import ExperimentConfig, RunConfig, load_config, parse_config
from .metrics import aggregate, delta_m
from .problems import Metric, Problem, get_problem, problems, register_problem
from .runner import OneTask, run, run_all

__all__ = [
    "ExperimentConfig", "Metric", "OneTask", "Problem", "RunConfig", "aggregate", "delta_m", "get_problem",
    "load_config", "parse_config", "problems", "register_problem", "run", "run_all",
]
