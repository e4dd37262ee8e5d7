"""Helpers shared by several methods: the simplex state of MoDo/SDMGrad, the optional per-task
vectors, the norm cap of Nash-MTL/AuxiNash and the interval checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgrad.methods._common import clip_combination
from taskgrad.methods._validate import outside
from taskgrad.methods.gram._zoo_checks import check_real, simplex_state, task_vector
from taskgrad.methods.gram.modo import MoDo
from taskgrad.methods.gram.sdmgrad import SDMGrad


@pytest.mark.parametrize("make", [MoDo, SDMGrad])
def test_stateful_simplex_methods_refuse_another_task_count(make):
    m = make()
    m(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"holds weights for shape \(3,\).*call reset\(\)"):
        m(torch.eye(2, dtype=torch.float64))
    m.reset()
    assert m(torch.eye(2, dtype=torch.float64)).shape == (2,)


def test_simplex_state_starts_uniform_in_the_gram_dtype():
    G = torch.eye(4, dtype=torch.float32).expand(2, 4, 4)
    w = simplex_state("X", None, G)
    assert w.dtype == torch.float32 and w.shape == (2, 4)
    assert torch.equal(w, torch.full((2, 4), 0.25))
    held = torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 2, dtype=torch.float64)
    assert simplex_state("X", held, G).dtype == torch.float32


def test_task_vector_default_and_length_check():
    like = torch.zeros(1, dtype=torch.float32)
    assert torch.equal(task_vector("p", None, 3, 0.5, like), torch.full((3,), 0.5))
    v = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert task_vector("p", v, 2, 0.0, like).dtype == torch.float32
    with pytest.raises(ValueError, match="p has 2 entries but there are 3 tasks"):
        task_vector("p", v, 3, 0.0, like)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cap=st.floats(1e-3, 10.0))
def test_clip_combination_caps_the_norm_and_keeps_the_direction(seed, cap):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(3, 5, generator=g, dtype=torch.float64)
    w = torch.rand(3, generator=g, dtype=torch.float64)
    out = clip_combination(w, J @ J.T, cap)
    before = float((J.T @ w).norm())
    assert float((J.T @ out).norm()) <= cap * (1 + 1e-12)
    assert torch.allclose(out, w * min(1.0, cap / before), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(
    ("v", "low", "high", "low_open", "high_open", "out"),
    [
        (0.0, 0.0, 1.0, False, False, False),
        (0.0, 0.0, 1.0, True, False, True),
        (1.0, 0.0, 1.0, False, True, True),
        (1.5, 0.0, None, False, False, False),
        (-0.1, 0.0, None, False, False, True),
    ],
)
def test_outside_follows_open_and_closed_ends(v, low, high, low_open, high_open, out):
    assert outside(v, low, high, low_open, high_open) is out


def test_zoo_check_real_keeps_its_messages_and_accepts_infinity():
    assert check_real("c", float("inf"), low=0.0) == float("inf")
    with pytest.raises(ValueError, match=r"c must be in \(0, 1\], got 0.0"):
        check_real("c", 0.0, low=0.0, high=1.0, low_open=True)
    with pytest.raises(ValueError, match="c must be in"):
        check_real("c", float("nan"))
