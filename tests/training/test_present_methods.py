"""Stateful methods on partially present tasks: absent tasks keep their state bit for bit, the
present ones advance exactly as the method run on the present tasks alone (a reference built
by slicing each method's state by hand)."""

from __future__ import annotations

import copy

import pytest
import torch

import taskgrad.methods as M
from taskgrad.training.present import check_present, present_weights


def _adam_slice(opt_state: dict, idx: torch.Tensor) -> dict:
    out = copy.deepcopy(opt_state)
    for st in out["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key] = st[key][idx].clone()
    return out


def _learned_slice(d: dict, idx: torch.Tensor) -> dict:
    return {"value": d["value"][idx].clone(), "optim": _adam_slice(d["optim"], idx)}


HAND_SLICE = {
    "dwa": lambda s, i: {**s, "history": [h[i].clone() for h in s["history"]]},
    "famo": lambda s, i: {"xi": _learned_slice(s["xi"], i), "prev": s["prev"][i].clone()},
    "gradvac": lambda s, i: {**s, "phi_hat": s["phi_hat"][i][:, i].clone()},
    "uncertainty": lambda s, i: {"s": _learned_slice(s["s"], i)},
}


def _make(name: str):
    """The method, with a seeded generator where it draws random numbers (its state holds it)."""
    if name == "gradvac":
        return M.get(name, generator=torch.Generator().manual_seed(0))
    return M.get(name)


def _tensors(x, prefix=""):
    """{path: tensor} of every tensor in a nested state."""
    if isinstance(x, torch.Tensor):
        return {prefix: x}
    if isinstance(x, dict):
        return {p: t for k, v in x.items() for p, t in _tensors(v, f"{prefix}/{k}").items()}
    if isinstance(x, (list, tuple)):
        return {p: t for j, v in enumerate(x) for p, t in _tensors(v, f"{prefix}/{j}").items()}
    return {}


def _inputs(k: int, t: int):
    g = torch.Generator().manual_seed(100 + t)
    J = torch.randn(k, 6, generator=g, dtype=torch.float64) + 0.5
    return J @ J.T, torch.rand(k, generator=g, dtype=torch.float64) + 0.5


@pytest.mark.parametrize("name", sorted(HAND_SLICE))
def test_absent_tasks_keep_their_state_and_present_ones_follow_the_reference(name: str) -> None:
    k = 4
    method = _make(name)
    for t in range(3):  # every task present: the state forms
        G, L = _inputs(k, t)
        method(gram=G, losses=L)
    masks = [
        [True, False, True, True],
        [False, True, True, False],
        [True, True, False, True],
        [True, False, False, True],
    ]
    for t, mask in enumerate(masks, start=3):
        present = torch.tensor(mask)
        idx = present.nonzero().squeeze(-1)
        G, L = _inputs(k, t)
        before = copy.deepcopy(method.state_dict())
        ref = _make(name)
        ref.load_state_dict(HAND_SLICE[name](copy.deepcopy(before), idx))
        w_ref = ref(gram=G[idx][:, idx], losses=L[idx])
        w = present_weights(method, G, L, present)
        assert bool((w[~present] == 0).all())
        torch.testing.assert_close(w[idx], w_ref, rtol=0, atol=0)
        after = method.state_dict()
        # present entries: the reference's new state; absent entries: unchanged
        expect_sub = _tensors(ref.state_dict())
        got_sub = _tensors(HAND_SLICE[name](copy.deepcopy(after), idx))
        for path, tensor in expect_sub.items():
            torch.testing.assert_close(got_sub[path], tensor, rtol=0, atol=0, msg=f"{name} {path}")
        absent = (~present).nonzero().squeeze(-1)
        if absent.numel():
            old_abs, new_abs = (
                _tensors(HAND_SLICE[name](before, absent)),
                _tensors(HAND_SLICE[name](after, absent)),
            )
            for path, tensor in old_abs.items():
                if (
                    tensor.dim() > 0 and "generator" not in path
                ):  # per-task (shared counters, RNG advance)
                    assert torch.equal(new_abs[path], tensor), (
                        f"{name} {path} changed for an absent task"
                    )


@pytest.mark.parametrize("name", sorted(HAND_SLICE))
def test_all_present_is_the_plain_call(name: str) -> None:
    a, b = _make(name), _make(name)
    for t in range(4):
        G, L = _inputs(3, t)
        w = present_weights(a, G, L, torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(w, b(gram=G, losses=L), rtol=0, atol=0)


def test_state_not_formed_yet_runs_on_a_temporary_copy() -> None:
    m = M.get("dwa")
    G, L = _inputs(3, 0)
    w = present_weights(m, G, L, torch.tensor([True, False, True]))
    assert float(w[1]) == 0.0
    assert m.state_dict() == M.get("dwa").state_dict()  # nothing recorded for a partial step


def test_check_present_messages() -> None:
    assert check_present(None, 3) is None
    assert check_present(torch.ones(3, dtype=torch.bool), 3) is None
    # non-negative counts: present where > 0
    assert check_present(torch.ones(3), 3) is None
    assert check_present(torch.tensor([2, 0, 5]), 3).tolist() == [True, False, True]
    with pytest.raises(TypeError, match="boolean"):
        check_present(torch.ones(3, dtype=torch.complex64), 3)
    with pytest.raises(ValueError, match="non-negative"):
        check_present(torch.tensor([1.0, -1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="non-negative"):
        check_present(torch.tensor([1.0, float("nan"), 2.0]), 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_present(torch.ones(2, dtype=torch.bool), 3)


def _stateful_gram_methods() -> list[str]:
    from taskgrad.methods.registry import infos

    return [
        name
        for name, info in infos().items()
        if info.stateful and "jacobian" not in info.example(3).needs
    ]


@pytest.mark.parametrize("name", _stateful_gram_methods())
def test_every_stateful_method_steps_through_absences_from_its_second_step_on(name: str) -> None:
    """A task absent while the state is still forming (e.g. FAMO's Adam state is created on its
    second step), then back: every step runs, absent tasks get weight 0, present ones finite."""
    from taskgrad.methods.registry import infos

    info = infos()[name]
    kw = {"generator": torch.Generator().manual_seed(0)} if info.random else {}
    method = info.example(3, **kw)
    masks = ([True] * 3, [False, True, True], [True] * 3, [True, True, False], [True] * 3)
    for t, mask in enumerate(masks):
        G, L = _inputs(3, t)
        present = torch.tensor(mask)
        w = present_weights(method, G, L, present)
        assert bool((w[~present] == 0).all()), (name, t)
        assert bool(torch.isfinite(w[present]).all()), (name, t, w)
