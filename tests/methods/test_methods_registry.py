"""Generic tests over the method registry, driven by each method's MethodInfo: a registered
method must declare every property, and every declared property must hold.

Adding a method file registers it (see taskgrad.methods.registry); these tests then check it with
no list to edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgrad import methods as M
from taskgrad.methods.registry import DEFINED, FAMILIES, MethodInfo
from tests.methods.methods_helpers import jacobian

INFOS = M.infos()
NAMES = sorted(INFOS)
FAST = settings(max_examples=6, deadline=None)


def make(info: MethodInfo, k: int, seed: int = 0):
    kw = {"generator": torch.Generator().manual_seed(seed)} if info.random else {}
    return info.example(k, **kw)


def direction(m, J: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """The update d the method takes for task gradients J (k, P) and losses L (k,)."""
    if "jacobian" in m.needs:
        return m.aggregate(J, losses=L)
    return m(gram=J @ J.T, losses=L) @ J


def losses_for(k: int, seed: int) -> torch.Tensor:
    return torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def well_conditioned(k: int, seed: int) -> torch.Tensor:
    """Full-rank gradients sharing a common component (a direction improves every task)."""
    return jacobian(k, 3 * k + 2, seed, correlated=1.5)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


# --------------------------------------------------------------------------------------------
# the table itself


def test_every_registered_method_declares_every_property():
    missing = {n: i.undeclared() for n, i in INFOS.items() if i.undeclared()}
    assert not missing, f"methods registered without these MethodInfo properties: {missing}"
    for name, info in INFOS.items():
        assert info.defined in DEFINED, name
        assert info.family in FAMILIES, (name, info.family)
        assert info.description, name
        assert not info.random or info.stateful, (
            f"{name}: a random method saves its generator, so it is stateful"
        )


def test_every_method_module_registers_a_method():
    registered = {getattr(i.factory, "__module__", "") for i in INFOS.values()}
    for fam in FAMILIES:
        pkg = importlib.import_module(f"taskgrad.methods.{fam}")
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                assert f"{pkg.__name__}.{mod.name}" in registered, (
                    f"{pkg.__name__}.{mod.name} registers no method"
                )


def test_names_aliases_and_suggestions():
    assert isinstance(M.get("PrimaryAux"), M.PrimaryAux)
    assert isinstance(M.get("NashMTL"), M.NashMTL)
    for libmtl, cls in [
        ("EW", M.Mean),
        ("UW", M.UncertaintyWeighting),
        ("GLS", M.GeometricMean),
        ("DWA", M.DWA),
        ("GradNorm", M.GradNorm),
        ("MGDA", M.MGDA),
        ("PCGrad", M.PCGrad),
        ("GradVac", M.GradVac),
        ("CAGrad", M.CAGrad),
        ("Nash_MTL", M.NashMTL),
        ("IMTL", M.HybridIMTL),
        ("IMTLG", M.IMTLG),
        ("RLW", M.RLW),
        ("Aligned_MTL", M.AlignedMTL),
        ("DB_MTL", M.DBMTL),
        ("FAMO", M.FAMO),
        ("STCH", M.STCH),
        ("UPGrad", M.UPGrad),
        ("nash mtl", M.NashMTL),
        ("MGDA-UB", M.MGDAUB),
    ]:
        assert isinstance(M.get(libmtl), cls), libmtl
    with pytest.raises(KeyError, match="did you mean 'pcgrad'"):
        M.get("pcgard")
    with pytest.raises(TypeError, match=r"needs the argument\(s\) \['prior'\]"):
        M.get("prior-loss")
    with pytest.raises(TypeError, match=r"does not accept the argument\(s\) \['c'\]"):
        M.get("mean", c=1)
    with pytest.raises(ValueError, match="already registered"):
        M.register("mean", M.Mean, "dup")
    with pytest.raises(ValueError, match="already taken"):
        M.register("mean-2", M.Mean, "dup", aliases=("EW",))


def test_describe_lists_parameters_defaults_and_paper():
    text = M.describe("CAGrad")
    assert text.startswith("cagrad: ")
    assert (
        "c: float (default 0.4)" in text
        and "Liu et al." in text
        and "non_conflicting=False" in text
    )
    assert "prior" in M.describe("prior-loss") and "required" in M.describe("prior-loss")


# --------------------------------------------------------------------------------------------
# declared properties


def degenerate_cases(k: int = 3) -> dict[str, tuple[torch.Tensor, bool]]:
    """{case: (J, improvable)}: improvable means some d has ⟨gᵢ, d⟩ > 0 for every task."""
    g = jacobian(1, 6, 0)[0]
    h = jacobian(1, 6, 1)[0]
    z = torch.zeros(6, dtype=torch.float64)
    return {
        "random": (well_conditioned(k, 3), True),
        "duplicate": (torch.stack([g, g, h + g]), True),
        "mixed scales": (
            well_conditioned(3, 4) * torch.tensor([[1e-3], [1.0], [1e3]], dtype=torch.float64),
            True,
        ),
        "zero gradient": (torch.stack([g, z, h]), False),
        "opposite": (torch.stack([g, -g, h]), False),
        "all zero": (torch.zeros(3, 6, dtype=torch.float64), False),
        "one task": (g.unsqueeze(0), True),
        "many tasks, rank-deficient": (jacobian(40, 30, 2, correlated=2.0), True),
    }


@pytest.mark.parametrize("name", NAMES)
def test_defined_where_declared(name):
    info = INFOS[name]
    for case, (J, improvable) in degenerate_cases().items():
        k = J.shape[0]
        m = make(info, k)
        L = losses_for(k, 0)
        if info.defined == "zero-not-in-hull" and not improvable:
            with pytest.raises(M.UndefinedMethodError):
                direction(m, J, L)
            continue
        if info.defined == "enough-tasks" and k < m.min_tasks:
            with pytest.raises(M.UndefinedMethodError):
                direction(m, J, L)
            continue
        d = direction(m, J, L)
        assert d.shape == (J.shape[1],) and bool(torch.isfinite(d).all()), (name, case)


@FAST
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_non_conflicting_where_declared(k, seed):
    J = jacobian(k, 6, seed)
    J = (
        J
        * torch.logspace(-2, 2, k, dtype=torch.float64)[
            torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        ][:, None]
    )
    L = losses_for(k, seed)
    for name, info in INFOS.items():
        if not info.non_conflicting:
            continue
        try:
            d = direction(make(info, k), J, L)
        except M.UndefinedMethodError:
            assert info.defined == "zero-not-in-hull", name
            continue
        inner = J @ d
        tol = 1e-9 * float(J.norm(dim=1).max() * d.norm())
        assert bool((inner >= -tol).all()), (name, inner)


@FAST
@given(st.integers(2, 5), st.integers(0, 10_000), st.randoms(use_true_random=False))
@pytest.mark.slow
def test_permutation_equivariant_where_declared(k, seed, rnd):
    J = well_conditioned(k, seed)
    L = losses_for(k, seed)
    perm = list(range(k))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    for name, info in INFOS.items():
        if not info.permutation_equivariant:
            continue
        try:
            d = direction(make(info, k), J, L)
        except M.UndefinedMethodError:
            continue
        dp = direction(make(info, k), J[p], L[p])
        assert float((dp - d).norm()) <= 1e-6 * max(float(d.norm()), 1e-12), name


@FAST
@given(
    st.integers(2, 5),
    st.integers(0, 10_000),
    st.lists(st.floats(1e-2, 1e2), min_size=5, max_size=5),
)
def test_scale_invariant_where_declared(k, seed, scales):
    J = well_conditioned(k, seed)
    L = losses_for(k, seed)
    C = torch.tensor(scales[:k], dtype=torch.float64)
    for name, info in INFOS.items():
        if not info.scale_invariant:
            continue
        try:
            d = direction(make(info, k), J, L)
        except M.UndefinedMethodError:
            continue
        ds = direction(make(info, k), J * C[:, None], L)
        assert cos(d, ds) >= 1 - 1e-6, (name, cos(d, ds))


@pytest.mark.parametrize("name", NAMES)
def test_state_where_declared(name):
    """Stateful: state_dict() non-empty and resuming from it is bit-identical. Stateless: {}."""
    info = INFOS[name]
    k = 3
    steps = [(well_conditioned(k, t), losses_for(k, t)) for t in range(8)]
    full = make(info, k)
    ref = [direction(full, J, L) for J, L in steps]
    first = make(info, k)
    for J, L in steps[:4]:
        direction(first, J, L)
    saved = first.state_dict()
    if not info.stateful:
        assert saved == {}, name
        first.load_state_dict({})
        return
    assert saved, f"{name} declares stateful=True but its state_dict() is empty"
    for J, L in steps[4:6]:  # keep going: the saved state must not move
        direction(first, J, L)
    resumed = make(info, k, seed=999)  # another generator position, restored by the state
    resumed.load_state_dict(saved)
    for (J, L), r in zip(steps[4:], ref[4:], strict=True):
        assert torch.equal(direction(resumed, J, L), r), name


@pytest.mark.parametrize("name", [n for n in NAMES if INFOS[n].random])
def test_random_where_declared(name):
    """A random method draws from its own generator: equal seeds repeat, other seeds differ."""
    info = INFOS[name]
    k = 4
    steps = [(jacobian(k, 6, t), losses_for(k, t)) for t in range(3)]  # conflicting: orders matter
    a, b, c = make(info, k, seed=1), make(info, k, seed=1), make(info, k, seed=2)
    da = [direction(a, J, L) for J, L in steps]
    db = [direction(b, J, L) for J, L in steps]
    dc = [direction(c, J, L) for J, L in steps]
    assert all(torch.equal(x, y) for x, y in zip(da, db, strict=True)), name
    assert any(not torch.equal(x, y) for x, y in zip(da, dc, strict=True)), name


def test_needs_come_from_the_typed_compute_signature():
    from torch import Tensor

    class LossOnly(M.Weighting):
        def compute(self, *, losses: Tensor) -> Tensor:
            return losses / losses.sum(-1, keepdim=True)

    class Both(M.Weighting):
        def compute(self, *, gram: Tensor, losses: Tensor) -> Tensor:
            return torch.diagonal(gram, dim1=-2, dim2=-1) * losses

    assert LossOnly.needs == {"losses"} and Both.needs == {"gram", "losses"}
    L = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert torch.equal(LossOnly()(losses=L), torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs the task losses"):
        Both()(gram=torch.eye(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="declare the same inputs"):

        class Wrong(M.Weighting):  # noqa: F841
            needs = frozenset({"gram"})

            def compute(self, *, losses: Tensor) -> Tensor:
                return losses


@pytest.mark.parametrize("name", [n for n in NAMES if not INFOS[n].random and INFOS[n].batched])
def test_batched_equals_one_by_one(name):
    """A (2, 3, k, k) batch of Gram matrices gives each problem's weights (first call each)."""
    info = INFOS[name]
    k = 4
    if "jacobian" in info.example(k).needs:
        pytest.skip("Jacobian aggregators take one Jacobian at a time")
    Js = [well_conditioned(k, s) for s in range(6)]
    Gs = torch.stack([J @ J.T for J in Js]).reshape(2, 3, k, k)
    Ls = torch.stack([losses_for(k, s) for s in range(6)]).reshape(2, 3, k)
    wb = info.example(k)(gram=Gs, losses=Ls)
    assert wb.shape == (2, 3, k), name
    for i in range(2):
        for j in range(3):
            w = info.example(k)(gram=Gs[i, j], losses=Ls[i, j])
            assert float((wb[i, j] - w).abs().max()) <= 1e-8 * max(float(w.abs().max()), 1.0), (
                name,
                i,
                j,
            )


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_negative_counts_are_refused_at_construction(name):
    """Every float hyper-parameter refuses NaN, every int one refuses -1, with a message that
    names it (read from the signature: a new method is checked without a list to edit)."""
    import inspect

    info = INFOS[name]
    base = dict(info.example_kwargs(3)) if info.example_kwargs is not None else {}
    for pname, p in inspect.signature(info.factory).parameters.items():
        if pname in base or isinstance(p.default, bool):
            continue
        if isinstance(p.default, float):
            bad = float("nan")
        elif isinstance(p.default, int):
            bad = -1
        else:
            continue
        with pytest.raises((ValueError, TypeError), match=pname.rstrip("_").split("_")[0]):
            info.factory(**{**base, pname: bad})
