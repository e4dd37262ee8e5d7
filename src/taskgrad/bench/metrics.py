"""Δm and seed aggregation.

Δm% (Maninis et al., 2019) of a multi-task model m against the single-task baselines b, over the
K metrics of all tasks:  Δm = 100/K · Σ_j (−1)^{h_j} (M_{m,j} − M_{b,j}) / M_{b,j},  with h_j = 1
when higher is better for metric j (so lower Δm is better, and Δm < 0 beats single-task training).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["aggregate", "delta_m", "mean_std"]


def delta_m(
    values: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Δm% of ``values`` against ``baseline`` over the metrics named in ``higher_is_better``."""
    if not higher_is_better:
        raise ValueError("higher_is_better is empty: Δm needs at least one metric.")
    missing = [k for k in higher_is_better if k not in values or k not in baseline]
    if missing:
        raise KeyError(
            f"Δm needs every metric in both the run and the baseline; missing {missing}."
        )
    total = 0.0
    for key, higher in higher_is_better.items():
        b = float(baseline[key])
        if b == 0 or not math.isfinite(b):
            raise ValueError(
                f"baseline of {key!r} is {b}: Δm divides by it, so it must be finite and non-zero."
            )
        rel = (float(values[key]) - b) / abs(b)
        total += -rel if higher else rel
    return 100.0 * total / len(higher_is_better)


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    if not xs:
        raise ValueError("mean_std of an empty sequence.")
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(per_seed: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """{key: (mean, std)} over seeds, for the keys present in every seed's mapping."""
    if not per_seed:
        raise ValueError("aggregate needs at least one seed.")
    keys = [k for k in per_seed[0] if all(k in d for d in per_seed)]
    return {k: mean_std([float(d[k]) for d in per_seed]) for k in keys}
