"""Partially labelled tasks in the harness: label fractions drawn by seed (right counts, paired
across methods), masked-mean losses, steps with absent tasks (present=: weight 0, state of absent
tasks unchanged, agreement with a step on the present tasks alone), native NaN labels, config
errors, stale-result detection, and bit-identical runs when every example is labelled."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from taskgrad.bench import parse_config, registry, run
from taskgrad.bench.labels import draw_labelled, training_label_mask
from taskgrad.bench.problems.synthetic import SyntheticProblem
from taskgrad.bench.report import report
from taskgrad.bench.runner import StaleResultWarning, _new_trainer, _setup, _step, check_run


def _config(**over):
    raw = {
        "name": "pl",
        "dataset": "synthetic",
        "methods": ["mean"],
        "epochs": 1,
        "batch_size": 8,
        "device": "cpu",
        "data": {"n_train": 64, "n_test": 32},
        "optimizer": {"name": "adam", "lr": 1e-2},
        **over,
    }
    return parse_config(raw)


# ------------------------------------------------------------------ the draw
def test_fractions_label_round_f_n_examples_per_task_by_seed() -> None:
    tasks = ["a", "b", "c"]
    m = training_label_mask(None, 1000, tasks, {"a": 0.05, "b": 0.3}, seed=4)
    assert m is not None and m.sum(0).tolist() == [50, 300, 1000]
    again = training_label_mask(None, 1000, tasks, {"a": 0.05, "b": 0.3}, seed=4)
    assert torch.equal(m, again)
    other = training_label_mask(None, 1000, tasks, {"a": 0.05, "b": 0.3}, seed=5)
    assert other is not None and not torch.equal(m[:, 0], other[:, 0])
    # a task's subset does not depend on the other tasks' fractions, and a smaller fraction keeps
    # a subset of a larger one's rows (one permutation per seed and task)
    alone = training_label_mask(None, 1000, tasks, {"a": 0.05}, seed=4)
    assert alone is not None and torch.equal(alone[:, 0], m[:, 0])
    larger = training_label_mask(None, 1000, tasks, {"a": 0.2}, seed=4)
    assert larger is not None and bool((larger[:, 0] | ~m[:, 0]).all())
    # fractions of 1 label everything: no mask at all
    assert training_label_mask(None, 1000, tasks, {"a": 1.0}, seed=4) is None
    # a count instead of a fraction: exactly that many, from the same permutation (nested)
    c = training_label_mask(None, 1000, tasks, {"b": 0.3}, seed=4, counts={"a": 20, "c": 999})
    assert c is not None and c.sum(0).tolist() == [20, 300, 999]
    assert bool((m[:, 0] | ~c[:, 0]).all()) and torch.equal(c[:, 1], m[:, 1])
    with pytest.raises(ValueError, match=r"label_counts\['a'\]: 2000 labelled examples asked"):
        training_label_mask(None, 1000, tasks, {}, seed=4, counts={"a": 2000})


def test_fractions_apply_on_top_of_a_native_mask_among_the_training_rows() -> None:
    g = torch.Generator().manual_seed(0)
    native = torch.rand(400, 2, generator=g) < 0.7
    native[:, 1] = True
    rows = torch.arange(40, 400)  # rows 0..39: a validation set, never trained on
    m = training_label_mask(native, 400, ["a", "b"], {"a": 0.1, "b": 0.25}, seed=1, rows=rows)
    assert m is not None
    n_a = int(native[rows, 0].sum())
    assert int(m[rows, 0].sum()) == round(0.1 * n_a) and int(m[rows, 1].sum()) == 90
    assert not bool((m & ~native).any())  # never labels an example the data set does not label
    assert torch.equal(m[:40], native[:40])  # rows outside training keep their native flags
    with pytest.raises(ValueError, match="keeps 0: at least one is needed"):
        draw_labelled(torch.arange(10), 0.01, 0, 0)


def test_label_masks_are_paired_across_methods_and_baselines() -> None:
    cfg = _config(
        methods=["mean", "mgda", "primary-aux"],
        seeds=[0, 1],
        single_task=True,
        label_fractions={"reg": 0.25},
        val_fraction=0.25,
    )
    masks: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for i, rc in enumerate(cfg.runs):
        torch.manual_seed(100 + i)  # the draw does not read the global generator
        s = _setup(rc)
        assert s.labelled is not None
        assert s.n_labelled == {"reg": 12, "cls": 48}  # 48 training rows after validation
        masks[rc.seed].append(s.labelled)
    assert len(masks[0]) == 5 and all(torch.equal(m, masks[0][0]) for m in masks[0])
    assert not torch.equal(masks[0][0], masks[1][0])  # the label seed is the run's seed
    fixed = _config(seeds=[0, 1], label_fractions={"reg": 0.25}, label_seed=7).runs
    assert torch.equal(_setup(fixed[0]).labelled, _setup(fixed[1]).labelled)
    counted = _config(label_counts={"cls": 10}, val_fraction=0.25).runs[0]
    assert _setup(counted).n_labelled == {"reg": 48, "cls": 10}


# ------------------------------------------------------------------ one step
def _trainer(method: str, fractions: dict[str, float]):
    rc = _config(methods=[method], label_fractions=fractions).runs[0]
    setup = _setup(rc)
    return _new_trainer(rc, setup, None, None), setup


def test_masked_loss_is_the_mean_over_the_labelled_rows() -> None:
    tr, setup = _trainer("mean", {"cls": 0.5})
    idx = torch.arange(16)
    rows = setup.labelled[idx]
    assert 0 < int(rows[:, 1].sum()) < 16
    x, y = setup.problem.batch(idx)
    _, outs = tr.model(x)
    losses, present = setup.problem.masked_losses(outs, y, rows)
    sel = rows[:, 1]
    want = nn.functional.binary_cross_entropy_with_logits(outs[1].squeeze(-1)[sel], y[sel, 1])
    assert bool(present.all()) and torch.allclose(losses[1], want)
    assert torch.equal(losses[0], nn.functional.mse_loss(outs[0].squeeze(-1), y[:, 0]))
    # every row labelled: bit-identical to the problem's own losses, values and gradients
    full, _ = setup.problem.masked_losses(outs, y, torch.ones(16, 2, dtype=torch.bool))
    ref = setup.problem.losses(outs, y)
    assert all(torch.equal(a, b) for a, b in zip(full, ref, strict=True))
    ga = torch.autograd.grad(sum(full), list(tr.model.parameters()), retain_graph=True)
    gb = torch.autograd.grad(sum(ref), list(tr.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ga, gb, strict=True))


def test_absent_task_steps_with_present_like_a_step_on_the_present_tasks() -> None:
    tr, setup = _trainer("mean", {"cls": 0.1})
    idx = (~setup.labelled[:, 1]).nonzero().squeeze(-1)[:8]  # no labelled cls example
    ref_model = copy.deepcopy(tr.model)
    head_before = [p.detach().clone() for p in tr.model.heads[1].parameters()]
    x, y = setup.problem.batch(idx)
    _, outs = tr.model(x)
    res, present = _step(tr, outs, y, idx, None)
    assert res is not None and not res.skipped
    assert present.tolist() == [True, False] and res.extra["present"].tolist() == [True, False]
    assert res.weights[1] == 0.0 and res.weights[0] == 1.0
    assert torch.isnan(res.losses[1])  # the placeholder of the absent task
    # the gradient is that of the present task alone (mean of one task: L_reg)
    _, ref_outs = ref_model(x)
    nn.functional.mse_loss(ref_outs[0].squeeze(-1), y[:, 0]).backward()
    for p, q in zip(tr.model.parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(
            torch.zeros_like(p) if p.grad is None else p.grad,
            torch.zeros_like(q) if q.grad is None else q.grad,
            atol=1e-7,
        )
    after = list(tr.model.heads[1].parameters())
    assert all(torch.equal(a, b) for a, b in zip(head_before, after, strict=True))


def test_absent_task_keeps_its_method_state() -> None:
    tr, setup = _trainer("uncertainty", {"cls": 0.1})
    both = (setup.labelled.all(1)).nonzero().squeeze(-1)[:8]
    no_cls = (~setup.labelled[:, 1]).nonzero().squeeze(-1)[:8]
    method = tr.topt.gradstep.method
    x, y = setup.problem.batch(both)
    _step(tr, tr.model(x)[1], y, both, None)  # the state forms on a step with every task
    before = method.state_dict()["s"]["value"].clone()
    x, y = setup.problem.batch(no_cls)
    res, _ = _step(tr, tr.model(x)[1], y, no_cls, None)
    after = method.state_dict()["s"]["value"]
    assert res is not None and res.weights[1] == 0.0
    assert after[1] == before[1] and after[0] != before[0]


class _NanLabels(SyntheticProblem):
    """Synthetic data whose training targets are NaN where unlabelled: reg on 60 % of the rows,
    cls on 30 % (the test split fully labelled)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        g = torch.Generator().manual_seed(3)
        y = self.y["train"].clone()
        y[torch.rand(len(y), generator=g) < 0.6, 0] = float("nan")
        y[torch.rand(len(y), generator=g) < 0.3, 1] = float("nan")
        self.y["train"] = y
        self.labelled = self.labelled_from_nan(y)


def test_nan_targets_never_reach_grad(add_problem) -> None:
    add_problem("nan-labels", _NanLabels, ["reg", "cls"])
    registry.clear_cache()
    rc = _config(dataset="nan-labels", methods=["mgda"]).runs[0]
    setup = _setup(rc)
    tr = _new_trainer(rc, setup, None, None)
    for b in range(8):
        idx = torch.arange(8 * b, 8 * b + 8)
        x, y = setup.problem.batch(idx)
        assert bool(torch.isnan(y).any())
        _step(tr, tr.model(x)[1], y, idx, None)
        for p in tr.model.parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all())
            assert bool(torch.isfinite(p).all())


def test_a_natively_partially_labelled_problem_trains(tmp_path, add_problem) -> None:
    add_problem("nan-labels", _NanLabels, ["reg", "cls"])
    registry.clear_cache()
    data = {"n_train": 128, "n_test": 32}
    cfg = _config(
        dataset="nan-labels", methods=["mean", "primary-aux"], epochs=3, single_task=True, data=data
    )
    for rc in cfg.runs:
        res = run(rc, tmp_path, show_progress=False)
        h = res["history"]
        assert len(h) == 3 and all(r["steps"] == 16 for r in h)
        labels = res["labels"]
        assert labels["fractions"] == {} and labels["seed"] is None
        n_lab = labels["n_labelled"]
        assert 0 < n_lab["reg"] < 128 * 0.6 and 0 < n_lab["cls"] < 128
        assert all(isinstance(r["absent/reg"], int) for r in h)
        assert all(torch.isfinite(torch.tensor(r["reg/mse"])) for r in h)
        if rc.label == "mean":
            assert h[-1]["reg/mse"] < h[0]["reg/mse"]  # it learns from the labelled rows
    with pytest.raises(ValueError, match="natively partially labelled"):
        run(_config(dataset="nan-labels", val_fraction=0.25).runs[0], tmp_path / "v")


# ------------------------------------------------------------------ runs
def test_absent_counts_single_task_baselines_and_the_absent_primary_rule(tmp_path) -> None:
    cfg = _config(
        methods=["sum", "primary-only", "mgda"],
        single_task=True,
        epochs=2,
        label_fractions={"reg": 0.1},
    )
    res = {rc.label: run(rc, tmp_path, show_progress=False) for rc in cfg.runs}
    absent = [r["absent/reg"] for r in res["mgda"]["history"]]
    assert sum(absent) > 0 and all(r["absent/cls"] == 0 for r in res["mgda"]["history"])
    for label in res:  # the same data order and labels: the same absent steps for every run
        assert [r["absent/reg"] for r in res[label]["history"]] == absent
        assert res[label]["labels"] == {
            "seed": 0,
            "fractions": {"reg": 0.1},
            "counts": {},
            "n_train": 64,
            "n_labelled": {"reg": 6, "cls": 64},
        }
    # primary/auxiliary methods skip a batch without the primary (task 0, reg), as does the
    # single-task baseline of reg; the others step on the present task
    for label in ("sum", "primary-only", "single-task:reg"):
        assert [r["skipped"] for r in res[label]["history"]] == absent, label
    for label in ("mgda", "single-task:cls"):
        assert all(r["skipped"] == 0 for r in res[label]["history"]), label
    # the single-task baseline of cls trains cls alone, also when reg is absent (weight 1 on it)
    assert all(r["weight/cls"] == 1.0 for r in res["single-task:cls"]["history"])
    md = report(tmp_path).read_text()
    assert (
        "Partially labelled training data: labelled examples reg 6 of 64, cls 64 of 64; label "
        "seed: each run's seed (the runs of one seed share their labels); a batch without a label "
        "of the primary task: no step (primary/auxiliary methods)." in md
    )
    # absent_primary = "mean": the auxiliaries are stepped on instead (primary-only still skips)
    cfg2 = _config(
        name="pl2",
        methods=["sum", "primary-only"],
        epochs=2,
        label_fractions={"reg": 0.1},
        absent_primary="mean",
    )
    res2 = {rc.label: run(rc, tmp_path, show_progress=False) for rc in cfg2.runs}
    assert all(r["skipped"] == 0 for r in res2["sum"]["history"])
    assert [r["skipped"] for r in res2["primary-only"]["history"]] == absent


def test_every_fraction_one_is_the_fully_labelled_run(tmp_path) -> None:
    plain = _config(methods=["mgda"], epochs=2).runs[0]
    ones = _config(
        methods=["mgda"], epochs=2, label_fractions={"reg": 1.0, "cls": 1}, label_seed=3
    ).runs[0]
    assert ones == plain and ones.fingerprint() == plain.fingerprint()
    a = run(plain, tmp_path / "a", show_progress=False)
    b = run(ones, tmp_path / "b", show_progress=False)
    assert "labels" not in a and a["history"][0].keys() == b["history"][0].keys()
    assert "Partially labelled" not in report(tmp_path / "a").read_text()
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert {k: v for k, v in ra.items() if k != "train_time_s"} == {
            k: v for k, v in rb.items() if k != "train_time_s"
        }
    ma = torch.load(tmp_path / "a" / plain.run_id / "checkpoint.pt", weights_only=False)
    mb = torch.load(tmp_path / "b" / ones.run_id / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(ma["model"][k], mb["model"][k]) for k in ma["model"])


def test_changed_fractions_make_a_saved_result_stale(tmp_path) -> None:
    old = _config(label_fractions={"reg": 0.25}).runs[0]
    run(old, tmp_path, show_progress=False)
    new = _config(label_fractions={"reg": 0.5}).runs[0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = run(new, tmp_path, show_progress=False)
    msgs = [str(x.message) for x in w if issubclass(x.category, StaleResultWarning)]
    assert len(msgs) == 1 and "label_fractions" in msgs[0]
    saved = json.loads((tmp_path / new.run_id / "result.json").read_text())
    assert saved["config"]["label_fractions"] == {"reg": 0.5}
    assert res["labels"]["n_labelled"]["reg"] == 32


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"label_fractions": {"regg": 0.1}}, r"names \['regg'\].*tasks are \['reg', 'cls'\]"),
        ({"label_fractions": {"reg": 0.0}}, r"label_fractions\['reg'\] must be a number"),
        ({"label_fractions": {"reg": 1.5}}, r"in \(0, 1\]"),
        ({"label_fractions": {"reg": "half"}}, r"in \(0, 1\].*str"),
        ({"label_fractions": {"reg": True}}, r"in \(0, 1\].*bool"),
        ({"label_fractions": 0.1}, r"\[label_fractions\] must be a table"),
        ({"label_seed": 1.5}, "'label_seed' must be an int"),
        ({"label_counts": {"reg": 0}}, r"label_counts\['reg'\] must be an int ≥ 1"),
        ({"label_counts": {"reg": 2.5}}, r"label_counts\['reg'\] must be an int ≥ 1"),
        ({"label_counts": {"rge": 5}}, r"label_counts names \['rge'\].*tasks are"),
        (
            {"label_counts": {"reg": 5}, "label_fractions": {"reg": 0.5}},
            r"\['reg'\] are in both label_fractions and label_counts",
        ),
        ({"absent_primary": "meen"}, "unknown method 'meen'.*Did you mean 'mean'"),
        ({"absent_primary": "sum"}, "primary/auxiliary method"),
        ({"absent_primary": "dwa"}, "stateful"),
        ({"absent_primary": 3}, "'absent_primary' must be 'skip' or a method name"),
    ],
)
def test_bad_label_settings_are_clear_errors(over, match) -> None:
    with pytest.raises(ValueError, match=match):
        _config(**over)


def test_unusable_label_settings_fail_before_training(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"label_fractions\['reg'\].*keeps 0"):
        check_run(_config(label_fractions={"reg": 0.001}).runs[0])
    with pytest.raises(ValueError, match=r"label_counts\['cls'\]: 100 labelled examples asked"):
        check_run(_config(label_counts={"cls": 100}).runs[0])
    with pytest.raises(ValueError, match="aggregates the Jacobian"):
        check_run(_config(methods=["graddrop"], label_fractions={"reg": 0.5}).runs[0])
    with pytest.raises(ValueError, match="kind = 'train'"):
        parse_config(
            {
                "name": "t",
                "dataset": "toy",
                "kind": "toy",
                "methods": ["mean"],
                "label_fractions": {"a": 0.5},
            }
        )


class _Doubled(SyntheticProblem):
    """Overrides ``losses`` alone (twice the synthetic losses), not ``task_loss``."""

    def losses(self, outputs, y):
        return [2.0 * v for v in super().losses(outputs, y)]


def test_a_problem_overriding_losses_alone_keeps_its_losses_under_a_mask() -> None:
    prob = _Doubled(n_train=16, n_test=4)
    model = prob.make_model()
    x, y = prob.batch(torch.arange(16))
    _, outs = model(x)
    rows = torch.ones(16, 2, dtype=torch.bool)
    rows[:5, 1] = False
    got, _ = prob.masked_losses(outs, y, rows)
    sub = prob.losses([o[5:] for o in outs], y[5:])
    assert torch.allclose(got[1], sub[1]) and torch.allclose(got[0], prob.losses(outs, y)[0])


def test_an_interrupted_partially_labelled_run_resumes_bit_identically(
    tmp_path, interrupted_then_resumed
) -> None:
    rc = _config(
        methods=["uncertainty"], epochs=2, label_fractions={"reg": 0.1}, checkpoint_every=3
    ).runs[0]
    # stopped mid-epoch 2, after a checkpoint at step 9
    full, resumed = interrupted_then_resumed(rc, tmp_path, at_step=11)
    assert resumed["resumed"] == 1 and sum(r["absent/reg"] for r in full["history"]) > 0
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "train_time_s"} == {
            k: v for k, v in b.items() if k != "train_time_s"
        }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_partially_labelled_run_on_cuda_draws_the_cpu_labels(tmp_path) -> None:
    over = {"methods": ["mgda"], "label_fractions": {"reg": 0.1}, "single_task": True}
    cpu = {rc.label: run(rc, tmp_path / "c", show_progress=False) for rc in _config(**over).runs}
    gpu_runs = _config(**over, device="cuda").runs
    gpu = {rc.label: run(rc, tmp_path / "g", show_progress=False) for rc in gpu_runs}
    for label, res in gpu.items():
        assert res["device"].startswith("cuda") and res["labels"] == cpu[label]["labels"]
        h, hc = res["history"][0], cpu[label]["history"][0]
        assert (h["absent/reg"], h["skipped"]) == (hc["absent/reg"], hc["skipped"])
        assert all(torch.isfinite(torch.tensor(v)) for k, v in h.items() if "/" in k)


def test_a_problem_label_mask_is_checked() -> None:
    prob = SyntheticProblem(n_train=16, n_test=4)
    assert prob.label_mask() is None  # the default: every example labelled
    prob.labelled = torch.ones(16, 2, dtype=torch.bool)
    assert prob.label_mask() is None
    prob.labelled = torch.ones(16, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"shape \(N_train, k\) = \(16, 2\).*shape \(16, 3\)"):
        prob.label_mask()
    prob.labelled = torch.ones(16, 2)
    with pytest.raises(ValueError, match="must be a bool tensor.*torch.float32"):
        prob.label_mask()
    prob.labelled = torch.ones(16, 2, dtype=torch.bool)
    prob.labelled[:, 1] = False
    with pytest.raises(ValueError, match=r"no labelled training example of the task.*'cls'"):
        prob.label_mask()
    y = torch.tensor([[1.0, float("nan")], [float("nan"), 0.0]])
    assert SyntheticProblem.labelled_from_nan(y).tolist() == [[True, False], [False, True]]
    assert SyntheticProblem.labelled_from_nan(torch.zeros(3, 2)) is None


@pytest.mark.parametrize("source", ["full", "representation", "jacobian"])
def test_every_method_family_trains_with_an_absent_task_on_each_gram_source(
    tmp_path, source
) -> None:
    cfg = _config(
        methods=["upgrad", "dwa", "pcgrad-aux"], source=source, label_fractions={"cls": 0.1}
    )
    for rc in cfg.runs:  # Gram-based, loss-based, primary/auxiliary (the primary, reg, present)
        h = run(rc, tmp_path, show_progress=False)["history"][0]
        assert h["absent/cls"] > 0 and h["skipped"] == 0, rc.label
        assert all(torch.isfinite(torch.tensor(v)) for k, v in h.items() if "/" in k), rc.label
