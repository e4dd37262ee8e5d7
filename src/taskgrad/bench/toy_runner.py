"""Trajectories of several methods on the CAGrad toy, saved as ``OUT/<name>/toy.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import methods as _methods
from ..datasets.toy import STARTS, pareto_front, trajectories

__all__ = ["run_toy"]

DEMO_METHODS = ("mean", "mgda", "pcgrad", "cagrad", "nash-mtl", "primary-aux")


def run_toy(
    out_dir: str | Path,
    name: str = "toy",
    methods: list[tuple[str, str, dict[str, Any]]] | None = None,
    steps: int = 700,
    lr: float = 0.05,
    scale: float = 0.1,
    record_every: int = 5,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run each (name, label, kwargs) method from the five standard starts; write and return toy.json."""
    from rich.progress import Progress

    entries = methods or [(m, m, {}) for m in DEMO_METHODS]
    data: dict[str, Any] = {"scale": scale, "lr": lr, "steps": steps, "starts": [list(s) for s in STARTS],
                            "pareto_front": pareto_front(scale).tolist(), "methods": {}}
    with Progress(disable=not show_progress, transient=True) as progress:
        for mname, label, kw in entries:
            bar = progress.add_task(f"toy: {label}", total=steps)
            t0 = time.perf_counter()
            tr = trajectories(lambda: _methods.get(mname, **kw), steps=steps, lr=lr, scale=scale,
                              record_every=record_every, progress=lambda: progress.advance(bar))
            data["methods"][label] = {
                "theta": tr["theta"].tolist(), "losses": tr["losses"].tolist(), "weights": tr["weights"].tolist(),
                "undefined_steps": tr["undefined_steps"].tolist(), "seconds": time.perf_counter() - t0,
            }
            progress.remove_task(bar)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy.json").write_text(json.dumps(data))
    return data
