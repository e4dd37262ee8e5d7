"""Bad input gets a clear error."""

import numpy as np
import pytest

from taskgrad.linear import MultiTaskLasso, MultiTaskLogisticRegression


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 5)), rng.standard_normal((20, 2))


def test_nan_rejected(xy):
    X, Y = xy
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MultiTaskLasso().fit(X, Y)
    with pytest.raises(ValueError, match="NaN"):
        MultiTaskLasso().fit([(X, Y[:, 0])])


@pytest.mark.parametrize("alpha", [-1.0, 0.0, np.nan, "a"])
def test_bad_alpha(xy, alpha):
    with pytest.raises(ValueError, match="alpha must be"):
        MultiTaskLasso(alpha=alpha).fit(*xy)


def test_mismatched_task_sizes(xy):
    X, Y = xy
    with pytest.raises(ValueError, match="same number of rows"):
        MultiTaskLasso().fit([(X, Y[:, 0]), (X[:10], Y[:, 1])])
    with pytest.raises(ValueError, match="same columns"):
        MultiTaskLasso().fit([(X, Y[:, 0]), (X[:, :3], Y[:, 1])])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        MultiTaskLasso().fit(X, Y[:10])
    with pytest.raises(ValueError, match="2 designs but 1 targets"):
        MultiTaskLasso().fit([X, X], [Y[:, 0]])


def test_one_class_in_a_task(xy):
    X, _ = xy
    Y = np.ones((20, 2), dtype=int)
    Y[:5, 0] = 0
    with pytest.raises(ValueError, match="Task 1 .*only one class"):
        MultiTaskLogisticRegression().fit(X, Y)
    with pytest.raises(ValueError, match="only one class"):
        MultiTaskLogisticRegression().fit(X, np.zeros(20))


def test_other_parameters(xy):
    with pytest.raises(ValueError, match="l1_ratio"):
        from taskgrad.linear import MultiTaskElasticNet

        MultiTaskElasticNet(l1_ratio=1.5).fit(*xy)
    with pytest.raises(ValueError, match="penalty"):
        MultiTaskLogisticRegression(penalty="l0").fit(xy[0], np.arange(20) % 2)
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        MultiTaskLasso().fit(*xy, sample_weight=-np.ones(20))
    with pytest.raises(ValueError, match="solver='cd' runs on the CPU only"):
        MultiTaskLasso(solver="cd", device="cuda").fit(*xy)
