"""present= under DDP: 3 gloo ranks against the global objective written out in one process.

One spawn runs every scenario of :mod:`._present`. A task present on some ranks only has the
mean over those ranks as its loss (bool masks) or the masked mean over the global batch
(counts); the ``.grad`` of every rank equals the reference's Σᵢ wᵢ∇Lᵢ to 1e-10 in float64, the
ranks agree bitwise, absent tasks' NaN losses never reach ``.grad``, a stateful method keeps an
absent task's state, and the absent-primary rule and the unsupported combinations behave.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from taskgrad.distributed import run_on_ranks

from . import _present as sc

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
    pytest.mark.slow,  # starts three processes
]

NAMES = [*sc.SCENARIOS, "errors"]
TOL = 1e-10


@pytest.fixture(scope="module")
def refs() -> dict[str, dict]:
    return {
        name: sc.reference(spec) for name, spec in sc.SCENARIOS.items() if name != "primary-skip"
    }


@pytest.fixture(scope="module")
def ranks(refs, tmp_path_factory) -> list[dict]:
    prefix = str(tmp_path_factory.mktemp("present") / "rank")
    run_on_ranks(sc.worker, sc.R, args=(NAMES, prefix), timeout=120.0)
    return [torch.load(f"{prefix}{r}.pt", weights_only=False) for r in range(sc.R)]


def _same_grads(a: list, b: list, tol: float | None = None) -> None:
    for ga, gb in zip(a, b, strict=True):
        if ga is None or gb is None:
            assert ga is None and gb is None or float((ga if gb is None else gb).abs().max()) == 0
            continue
        if tol is None:
            assert torch.equal(ga, gb)
        else:
            assert float((ga - gb).abs().max()) <= tol, float((ga - gb).abs().max())


def _ok(ranks: list[dict], name: str) -> list[dict]:
    for r in range(sc.R):
        assert "error" not in ranks[r][name], ranks[r][name].get("error")
    return [ranks[r][name] for r in range(sc.R)]


@pytest.mark.parametrize("name", [n for n in sc.SCENARIOS if not n.startswith(("primary", "nan"))])
def test_grad_is_the_global_objectives(ranks, refs, name):
    runs, ref = _ok(ranks, name), refs[name]
    for t in range(len(sc.SCENARIOS[name]["steps"])):
        for run in runs[1:]:  # every rank: bitwise the same weights and .grad
            assert torch.equal(run["weights"][t], runs[0]["weights"][t])
            _same_grads(run["grads"][t], runs[0]["grads"][t])
        got = runs[0]
        assert not got["skipped"][t]
        torch.testing.assert_close(got["weights"][t], ref["weights"][t], rtol=0, atol=TOL)
        torch.testing.assert_close(
            got["losses"][t], ref["losses"][t], rtol=0, atol=TOL, equal_nan=True
        )
        _same_grads(got["grads"][t], ref["grads"][t], TOL)
        assert all(g is None or bool(torch.isfinite(g).all()) for g in got["grads"][t])


def test_task_on_one_rank_only_and_absent_everywhere(ranks):
    """In "partial", task 1 is labelled on rank 0 only and task 2 nowhere: its NaN losses never
    reach .grad, its weight is 0 and its head's gradient is zero (the heads' outputs are
    concatenated, so every loss reaches every head); task 1's head gets its gradient."""
    runs = _ok(ranks, "mgda-bool")
    w = runs[0]["weights"][0]
    assert float(w[2]) == 0.0 and float(w[1]) > 0.0
    heads = runs[0]["grads"][0][2:]  # encoder weight and bias first, then (weight, bias) per head
    assert float(heads[4].abs().max()) == 0.0 and float(heads[5].abs().max()) == 0.0
    assert heads[2] is not None and float(heads[2].abs().max()) > 0
    assert torch.isnan(runs[0]["losses"][0][2])
    # the counts weigh task 0's ranks by their labelled examples: a different step
    counts = _ok(ranks, "mgda-counts")[0]
    assert float((counts["grads"][0][0] - runs[0]["grads"][0][0]).abs().max()) > 1e-6


@pytest.mark.parametrize("source", ["mgda", "rep-mgda"])
def test_every_task_present_equals_present_none(ranks, source):
    every, none = _ok(ranks, f"{source}-every")[0], _ok(ranks, f"{source}-none")[0]
    torch.testing.assert_close(every["weights"][0], none["weights"][0], rtol=0, atol=TOL)
    _same_grads(every["grads"][0], none["grads"][0], TOL)


def test_stateful_method_keeps_the_absent_tasks_state(ranks):
    runs = _ok(ranks, "gradvac")
    before, after = runs[0]["state"][0]["phi_hat"], runs[0]["state"][1]["phi_hat"]
    assert torch.equal(after[2], before[2]) and torch.equal(after[:, 2], before[:, 2])
    assert not torch.equal(after[0, 1], before[0, 1])  # the present pair moved
    for run in runs[1:]:
        for t in range(3):
            assert torch.equal(run["state"][t]["phi_hat"], runs[0]["state"][t]["phi_hat"])


def test_absent_primary_everywhere(ranks, refs):
    for run in _ok(ranks, "primary-skip"):
        assert run["skipped"] == [True] and "primary" in run["reason"]
        assert all(g is None for g in run["grads"][0])
    runs = _ok(ranks, "primary-mean")
    torch.testing.assert_close(
        runs[0]["weights"][0], torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    )
    _same_grads(runs[0]["grads"][0], refs["primary-mean"]["grads"][0], TOL)


def test_unsupported_combinations_raise_clearly(ranks):
    got = _ok(ranks, "errors")[0]
    assert set(got) == {"sketch", "no-module", "backward_fn", "period"}
    assert "FullGram" in got["sketch"] and "representation source" in got["sketch"]
    assert "module=" in got["no-module"]
    assert "backward_fn" in got["backward_fn"]
    assert "period=1" in got["period"]


def test_nan_loss_of_a_present_task_on_one_rank_skips_everywhere(ranks):
    for run in _ok(ranks, "nan-on-rank-2"):
        assert run["skipped"] == [True] and "1 rank" in run["reason"]
        assert all(g is None for g in run["grads"][0])
        assert torch.isnan(run["weights"][0]).all()
