"""The sketch Gram source in the harness: a run trains (fully and partially labelled), the
Gram the method sees agrees with the full Gram within the sketch's documented error
E‖Ĝ − G‖²_F = ((tr G)² + ‖G‖²_F)/r (for the present tasks alone when a task is absent), an
interrupted run resumes bit-identically, and a model the sketch cannot evaluate is a clear
error when the config is checked."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from taskgrad.bench import parse_config, run
from taskgrad.bench.problem import Metric
from taskgrad.bench.problems.mlp import MultiHeadMLP
from taskgrad.bench.problems.synthetic import SyntheticProblem
from taskgrad.bench.runner import _new_trainer, _setup, _sketch_loss, _step, check_run
from taskgrad.sources import FullGram, SketchGram


def _config(**over):
    raw = {
        "name": "sk",
        "dataset": "synthetic",
        "methods": ["upgrad"],
        "epochs": 1,
        "batch_size": 8,
        "device": "cpu",
        "source": "sketch",
        "data": {"n_train": 64, "n_test": 32},
        "optimizer": {"name": "adam", "lr": 1e-2},
        **over,
    }
    return parse_config(raw)


class ThreeTasks(SyntheticProblem):
    """The synthetic problem with a third task "sq": regression of s² (MSE)."""

    tasks = ["reg", "cls", "sq"]
    metrics = [*SyntheticProblem.metrics, Metric("sq", "mse", False)]

    def make_model(self, hidden: int = 8) -> nn.Module:
        return MultiHeadMLP(self.dim, [hidden], [1, 1, 1])

    def losses(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        return [self.task_loss(i, outputs, y) for i in range(3)]

    def task_loss(self, i: int, outputs: list[Tensor], y: Tensor) -> Tensor:
        if i < 2:
            return super().task_loss(i, outputs, y)
        return nn.functional.mse_loss(outputs[2].squeeze(-1), y[:, 0] ** 2)

    def metric_sums(self, outputs: list[Tensor], y: Tensor) -> dict[str, Tensor]:
        sq = ((outputs[2].squeeze(-1) - y[:, 0] ** 2) ** 2).sum()
        return {**super().metric_sums(outputs, y), "sq/mse": sq}


class WithDropout(SyntheticProblem):
    """The synthetic problem with dropout after the shared layer (random in training mode)."""

    def make_model(self, hidden: int = 8) -> nn.Module:
        model = MultiHeadMLP(self.dim, [hidden], [1, 1])
        model.trunk.append(nn.Dropout(0.5))
        return model


def _sketch_source(tr) -> SketchGram:
    """The trainer's sketch source (the step resolves it from the config's name)."""
    src = tr.topt.gradstep._resolve_source(None)
    assert isinstance(src, SketchGram)
    return src


def _error_bound(G: Tensor, r: int) -> float:
    """The sketch's documented mean squared error ((tr G)² + ‖G‖²_F)/r."""
    return float((G.trace() ** 2 + (G * G).sum()) / r)


@pytest.mark.parametrize("fractions", [{}, {"cls": 0.2}])
def test_a_sketch_run_trains_on_the_synthetic_problem(tmp_path, fractions) -> None:
    rc = _config(epochs=4, label_fractions=fractions).runs[0]
    hist = run(rc, tmp_path, show_progress=False)["history"]
    assert all(h["skipped"] == 0 for h in hist)
    for h in hist:
        assert all(math.isfinite(v) for k, v in h.items() if k.startswith(("train_loss", "weight")))
    first = hist[0]["train_loss/reg"] + hist[0]["train_loss/cls"]
    last = hist[-1]["train_loss/reg"] + hist[-1]["train_loss/cls"]
    assert last < 0.8 * first, (first, last)
    if fractions:  # steps with the classification task absent (present=) were taken
        assert sum(h["absent/cls"] for h in hist) > 0


def _batch_with_an_absent_task(setup, n: int = 8) -> Tensor:
    """Rows of a batch of n in which exactly one of the three tasks has no label."""
    for start in range(0, setup.n_train - n + 1):
        idx = torch.arange(start, start + n)
        if int((~setup.labelled[idx].any(0)).sum()) == 1:
            return idx
    raise AssertionError("no batch with one absent task")


@pytest.mark.parametrize("partial", [False, True])
def test_the_sketch_gram_agrees_with_the_full_gram_within_its_documented_error(
    add_problem, partial
) -> None:
    add_problem("three", ThreeTasks, ["reg", "cls", "sq"])
    over = {"label_fractions": {"cls": 0.15, "sq": 0.15}, "label_seed": 1} if partial else {}
    rc = _config(dataset="three", **over).runs[0]
    setup = _setup(rc)
    tr = _new_trainer(rc, setup, None, None)
    idx = _batch_with_an_absent_task(setup) if partial else torch.arange(8)
    x, y = setup.problem.batch(idx)
    _, outs = tr.model(x)
    rows = None
    if partial:
        rows = setup.labelled[idx]
        all_losses, present = setup.problem.masked_losses(outs, y, rows)
        keep = present.nonzero().squeeze(-1).tolist()
        losses = [all_losses[i] for i in keep]
        assert len(keep) == 2
    else:
        losses, keep = setup.problem.losses(outs, y), None
    # the function the sketch differentiates gives the step's losses (the present ones)
    fn = _sketch_loss(tr, x, y, rows, keep)
    with torch.no_grad():
        again = fn({n: p.detach() for n, p in fn.named_parameters().items()})
    assert torch.allclose(again, torch.stack([v.detach() for v in losses]), rtol=1e-6)
    G = FullGram().gram(losses).detach()
    m = G.shape[0]
    # the mean of N independent sketches is unbiased with the documented spread
    source = _sketch_source(tr)
    N = 200
    sketches = torch.stack([source.gram(losses, loss_fn=fn).detach() for _ in range(N)])
    r = source.r
    sd = ((G.diagonal()[:, None] * G.diagonal()[None, :] + G * G) / (r * N)).sqrt()
    assert bool(((sketches.mean(0) - G).abs() <= 5 * sd + 1e-6).all()), (sketches.mean(0), G)
    mse = float(((sketches - G) ** 2).sum((1, 2)).mean())
    assert 0.6 < mse / _error_bound(G, r) < 1.5, (mse, _error_bound(G, r))
    # the step through the runner: the method sees an m×m sketch within a few standard errors
    res, flags = _step(tr, outs, y, idx, None, x)
    assert res is not None and not res.skipped and res.gram is not None
    assert res.gram.shape == (m, m)
    assert float(((res.gram - G) ** 2).sum()) <= 9 * _error_bound(G, r)
    if partial:
        assert flags is not None and not bool(flags.all())
        assert float(res.weights[~flags].abs().sum()) == 0.0


def test_an_interrupted_sketch_run_resumes_bit_identically(
    tmp_path, interrupted_then_resumed
) -> None:
    rc = _config(epochs=2, checkpoint_every=3, label_fractions={"cls": 0.2}).runs[0]
    # stopped mid-epoch 2, after a checkpoint at step 9
    full, resumed = interrupted_then_resumed(rc, tmp_path, at_step=11)
    assert resumed["resumed"] == 1
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "train_time_s"} == {
            k: v for k, v in b.items() if k != "train_time_s"
        }


def test_a_model_the_sketch_cannot_evaluate_is_an_error_of_the_config_check(
    tmp_path, add_problem
) -> None:
    add_problem("dropout", WithDropout, ["reg", "cls"])
    check_run(_config().runs[0])  # a deterministic model passes
    rc = _config(dataset="dropout").runs[0]
    with pytest.raises(
        ValueError, match=r"model MultiHeadMLP of dataset 'dropout' gives other losses.*\(dropout\)"
    ):
        check_run(rc)
    check_run(_config(dataset="dropout", source="full").runs[0])  # another source is fine
    # a run meets the same error before its first step, not a crash inside the sketch
    with pytest.raises(ValueError, match=r"source = 'sketch' re-evaluates"):
        run(rc, tmp_path, show_progress=False)
