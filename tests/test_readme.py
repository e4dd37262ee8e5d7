"""The README's Python examples run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    w = namespace["res"].weights
    assert w.shape == (3,) and float(w[0]) == 1.0 and bool((w >= 0).all())
    assert bool(namespace["info"].converged)


def test_subpackages_load_on_first_use() -> None:
    import taskgrad

    assert taskgrad.linear.MultiTaskLasso.__name__ == "MultiTaskLasso"
    assert callable(taskgrad.second_order.hvp)
    assert callable(taskgrad.regularize.coefficient_free_direction)
    try:
        taskgrad.not_a_module  # noqa: B018
    except AttributeError as err:
        assert "not_a_module" in str(err)
    else:  # pragma: no cover
        raise AssertionError("unknown attribute did not raise")
