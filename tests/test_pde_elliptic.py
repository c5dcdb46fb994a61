"""Grids, boundary conditions, finite volumes and the elliptic problem catalogue."""

import json

import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import sympy

import jaxnum.linalg as jl
from jaxnum.pde import (
    ConvectionDiffusion,
    Darcy,
    Dirichlet,
    Grid,
    Helmholtz,
    Neumann,
    Periodic,
    Poisson,
    Robin,
    finite_volume_operator,
)

from .helpers import to_scipy

# --- manufactured solutions (sympy: an independent, symbolic reference) -------------

X = sympy.symbols("x0:3", real=True)


def _u_smooth(ndim):
    out = sympy.exp(X[0] / 2) * sympy.cos(2.1 * X[0] + 0.3)
    for i in range(1, ndim):
        out = out * sympy.cos(1.3 * X[i] + 0.2 * i)
    return out


def _a_smooth(ndim):
    return 1 + sympy.sin(2 * X[0] + 1) * sympy.Mul(*[sympy.cos(X[i]) for i in range(1, ndim)]) / 2


def _u_periodic(ndim):
    tp = 2 * sympy.pi
    return sympy.sin(tp * X[0]) * sympy.Mul(*[sympy.cos(tp * X[i]) for i in range(1, ndim)]) + sympy.cos(
        tp * sum(X[:ndim])
    )


def _a_periodic(ndim):
    return 1 + 0.3 * sympy.sin(2 * sympy.pi * sum(X[:ndim]) + 0.5)


def _evaluate(expr, points, ndim):
    fn = sympy.lambdify(X[:ndim], expr, "numpy")
    return np.broadcast_to(np.asarray(fn(*np.asarray(points)), float), points.shape[1:]).copy()


def _manufactured_system(
    n, ndim, kinds, *, u=_u_smooth, a=_a_smooth, velocity=None, reaction=None, scheme="central"
):
    """The FV system for a manufactured solution: `kinds[ax]` is the condition on both
    walls of axis `ax` ("dirichlet", "neumann", "robin", "periodic"); `u`, `a` build
    sympy expressions, `reaction` is a sympy expression."""
    grid = Grid((n,) * ndim)
    u, a = u(ndim), a(ndim)
    grad = [sympy.diff(u, X[i]) for i in range(ndim)]
    f = -sum(sympy.diff(a * grad[i], X[i]) for i in range(ndim))
    if velocity is not None:
        f = f + sum(v * g for v, g in zip(velocity, grad))
    if reaction is not None:
        f = f + reaction * u
    centres = np.asarray(grid.coordinates())
    values = []  # boundary values, wall by wall
    for ax, kind in enumerate(kinds):
        for side in (0, 1):
            if kind == "periodic":
                continue
            F = np.asarray(grid.face_coordinates(ax, side))
            flux = (-1 if side == 0 else 1) * a * grad[ax]
            g = {"dirichlet": u, "neumann": flux, "robin": 2 * u + flux / 2}[kind]
            values.append(_evaluate(g, F, ndim))

    def build(diffusion, c, values):
        values = list(values)
        boundary = []
        for kind in kinds:
            if kind == "periodic":
                boundary.append(Periodic())
                continue
            make = {
                "dirichlet": Dirichlet,
                "neumann": Neumann,
                "robin": lambda g: Robin(2.0, 0.5, g),
            }[kind]
            boundary.append((make(values.pop(0)), make(values.pop(0))))
        return finite_volume_operator(
            grid, boundary, diffusion=diffusion, velocity=velocity, reaction=c, scheme=scheme
        )

    c = None if reaction is None else _evaluate(reaction, centres, ndim)
    op, bc = jax.jit(build)(_evaluate(a, centres, ndim), c, values)
    return op, _evaluate(f, centres, ndim) + np.asarray(bc), _evaluate(u, centres, ndim)


def _sparse_solve(op, b, exact, singular=False):
    A = to_scipy(op).tocsc()
    b = np.asarray(b).ravel()
    if singular:  # fix the constant: mean of the solution = mean of the exact one
        N = A.shape[0]
        ones = np.ones((N, 1))
        K = sp.bmat([[A, ones], [ones.T, None]]).tocsc()
        return spla.spsolve(K, np.concatenate([b, [np.sum(exact)]]))[:N]
    return spla.spsolve(A, b)


def _orders(ns, ndim, kinds, singular=False, **kwargs):
    errors, scale = [], 0.0
    for n in ns:
        op, b, exact = _manufactured_system(n, ndim, kinds, **kwargs)
        sol = _sparse_solve(op, b, exact, singular)
        errors.append(np.sqrt(np.mean((sol - exact.ravel()) ** 2)))  # discrete L2
        scale = np.abs(exact).max()
    errors = np.array(errors)
    assert errors[-1] < 1e-2 * scale, errors  # small, not only converging
    return errors, np.log2(errors[:-1] / errors[1:])


@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("kind", ["dirichlet", "neumann", "robin", "periodic"])
def test_second_order_diffusion(ndim, kind):
    ns = [32, 64] if ndim == 1 else [16, 32]
    if kind == "periodic":
        # With a reaction term the periodic problem is non-singular.
        errors, orders = _orders(
            ns, ndim, ["periodic"] * ndim, u=_u_periodic, a=_a_periodic,
            reaction=1 + X[0] ** 2,
        )
    else:
        errors, orders = _orders(ns, ndim, [kind] * ndim, singular=kind == "neumann")
    assert np.all(orders > 1.85), (errors, orders)


def test_second_order_mixed_and_periodic_neumann():
    # Dirichlet on x, Robin on y; and pure-periodic/Neumann singular mix.
    _, orders = _orders([16, 32], 2, ["dirichlet", "robin"])
    assert np.all(orders > 1.85), orders

    def u(ndim):
        return sympy.cos(2 * sympy.pi * X[0]) * sympy.cos(sympy.pi * X[1])

    def a(ndim):
        return 1 + 0.3 * sympy.sin(2 * sympy.pi * X[0]) * sympy.cos(X[1])

    errors, orders = _orders([16, 32], 2, ["periodic", "neumann"], singular=True, u=u, a=a)
    assert np.all(orders > 1.85), (errors, orders)


def test_second_order_3d():
    errors, orders = _orders([8, 16], 3, ["dirichlet", "robin", "neumann"])
    assert orders[-1] > 1.9, (errors, orders)


def test_helmholtz_and_convection_diffusion_orders():
    # Helmholtz: -Laplace u - k(x)^2 u with k^2 = 30 + 10 x y (past the first
    # eigenvalue 2 pi^2 ~ 19.7: indefinite).
    _, orders = _orders(
        [16, 32], 2, ["dirichlet", "dirichlet"], a=lambda ndim: sympy.Integer(1),
        reaction=-(30 + 10 * X[0] * X[1]),
    )
    assert np.all(orders > 1.85), orders
    v = (3.0, -2.0)
    _, orders = _orders([16, 32], 2, ["dirichlet", "robin"], velocity=v, scheme="central")
    assert np.all(orders > 1.85), orders
    errors, orders = _orders([16, 32, 64], 2, ["dirichlet", "robin"], velocity=v, scheme="upwind")
    assert np.all((orders > 0.8) & (orders < 1.3)), (errors, orders)  # first order


def test_fv_matches_hand_built_1d_matrix():
    # Independent reference: the 1D cell-centred scheme written out by hand.
    n, h = 6, 1.0 / 6
    a = 1.0 + np.arange(n) / 3.0
    grid = Grid(n)
    op, bc = finite_volume_operator(
        grid, (Dirichlet(2.0), Robin(3.0, 2.0, 5.0)), diffusion=jnp.asarray(a)
    )
    A = np.zeros((n, n))
    for i in range(n - 1):
        t = 2 * a[i] * a[i + 1] / (a[i] + a[i + 1]) / h**2
        A[i, i] += t
        A[i + 1, i + 1] += t
        A[i, i + 1] -= t
        A[i + 1, i] -= t
    b = np.zeros(n)
    A[0, 0] += 2 * a[0] / h**2  # Dirichlet: flux a_0 (u_0 - g) / (h / 2)
    b[0] += 2 * a[0] / h**2 * 2.0
    # Robin 3 u_w + 2 F = 5 with F = c (u_w - u_{n-1}), c = 2 a / h; -F / h in the row.
    c = 2 * a[-1] / h
    A[-1, -1] += c * 3.0 / ((3.0 + 2.0 * c) * h)
    b[-1] += c * 5.0 / ((3.0 + 2.0 * c) * h)
    np.testing.assert_allclose(op.as_matrix(), A, rtol=1e-12)
    np.testing.assert_allclose(bc, b, rtol=1e-12)
    # The Neumann flux enters exactly: g / h.
    op, bc = finite_volume_operator(grid, (Neumann(0.7), Dirichlet()), diffusion=jnp.asarray(a))
    np.testing.assert_allclose(bc[0], 0.7 / h, rtol=1e-12)


def test_tags_symmetry_and_definiteness():
    key = jr.PRNGKey(0)
    grid = Grid((5, 4))
    a = jnp.exp(jr.normal(key, (5, 4)))
    op, _ = finite_volume_operator(
        grid, [(Dirichlet(), Neumann()), Robin(1.0, 2.0)], diffusion=a, reaction=0.5
    )
    assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    M = np.asarray(op.as_matrix())
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert np.linalg.eigvalsh(M).min() > 0
    op, _ = finite_volume_operator(grid, [Periodic(), Neumann()], diffusion=a)
    lam = np.linalg.eigvalsh(np.asarray(op.as_matrix()))
    assert abs(lam[0]) < 1e-10 and lam[1] > 1e-3  # the constant is the kernel
    op, _ = finite_volume_operator(grid, Dirichlet(), diffusion=a, velocity=(1.0, 2.0))
    assert not lx.is_symmetric(op)
    op, _ = finite_volume_operator(grid, Dirichlet(), reaction=-100.0)
    assert lx.is_symmetric(op) and not lx.is_positive_semidefinite(op)


# --- grids and boundaries: bad inputs -------------------------------------------


def test_grid():
    g = Grid((4, 8), lower=(0.0, -1.0), upper=(2.0, 1.0))
    assert g.ndim == 2 and g.size == 32 and g.spacing == (0.5, 0.25)
    np.testing.assert_allclose(g.centres(0), [0.25, 0.75, 1.25, 1.75])
    assert g.coordinates().shape == (2, 4, 8)
    F = g.face_coordinates(1, 1)
    assert F.shape == (2, 4)
    np.testing.assert_allclose(F[1], 1.0)
    np.testing.assert_allclose(F[0], g.centres(0))
    assert json.dumps(g.config())


@pytest.mark.parametrize(
    "args, error",
    [
        (((0, 4),), ValueError),
        ((-3,), ValueError),
        (((4, 4, 4, 4),), ValueError),
        (((),), ValueError),
        (((4.0, 4),), ValueError),
        (((4, 4), 1.0, 0.5), ValueError),
        (((4, 4), (0.0, 0.0, 0.0)), ValueError),
        (("abc",), ValueError),
        ((None,), TypeError),
    ],
)
def test_grid_bad_inputs(args, error):
    with pytest.raises(error):
        Grid(*args)


def test_boundary_bad_inputs():
    g = Grid((4, 5))
    with pytest.raises(ValueError, match="both of its walls"):
        finite_volume_operator(g, [(Periodic(), Dirichlet()), Dirichlet()])
    with pytest.raises(ValueError, match="one boundary entry per axis"):
        finite_volume_operator(g, [Dirichlet()])
    with pytest.raises(TypeError, match="Dirichlet"):
        finite_volume_operator(g, "dirichlet")
    with pytest.raises(ValueError, match="alpha >= 0"):
        Robin(-1.0, 1.0)
    with pytest.raises(ValueError, match="alpha >= 0"):
        Robin(0.0, 0.0)
    with pytest.raises(TypeError):
        Robin("1", 1.0)
    with pytest.raises(ValueError, match="face"):
        finite_volume_operator(g, [Dirichlet(jnp.ones(4)), Dirichlet()])  # needs (5,)
    with pytest.raises(ValueError, match="scheme"):
        finite_volume_operator(g, Dirichlet(), velocity=(1.0, 0.0), scheme="quick")
    with pytest.raises(ValueError, match="velocity"):
        finite_volume_operator(g, Dirichlet(), velocity=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="diffusion"):
        finite_volume_operator(g, Dirichlet(), diffusion=jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="positive everywhere"):
        finite_volume_operator(g, Dirichlet(), diffusion=jnp.ones((4, 5)).at[1, 2].set(0.0))
    with pytest.raises(ValueError, match="positive everywhere"):
        finite_volume_operator(g, Dirichlet(), diffusion=jnp.full((4, 5), jnp.nan))


# --- the problem catalogue ---------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, error",
    [
        (Darcy, {"resolution": 0}, ValueError),
        (Darcy, {"resolution": -8}, ValueError),
        (Poisson, {"resolution": (8, 0)}, ValueError),
        (Poisson, {"resolution": (8, 8, 8)}, ValueError),  # ndim is 2
        (Poisson, {"ndim": 4}, ValueError),
        (Darcy, {"coefficient": "gaussian"}, ValueError),
        (Darcy, {"low": 0.0}, ValueError),
        (Darcy, {"high": -12.0}, ValueError),
        (Helmholtz, {"wavenumber": (10.0, 5.0)}, ValueError),
        (Helmholtz, {"wavenumber": -1.0}, ValueError),
        (ConvectionDiffusion, {"speed": (-1.0, 2.0)}, ValueError),
        (ConvectionDiffusion, {"scheme": "quick"}, ValueError),
        (ConvectionDiffusion, {"diffusivity": 0.0}, ValueError),
        (Poisson, {"boundary": [(Periodic(), Dirichlet()), Dirichlet()]}, ValueError),
    ],
)
def test_problem_bad_inputs(cls, kwargs, error):
    with pytest.raises(error):
        cls(**{"resolution": 8, **kwargs})


def test_darcy_nonpositive_coefficient():
    prob = Darcy(8)
    a = jnp.full((8, 8), 3.0).at[2, 2].set(-1.0)
    with pytest.raises(ValueError, match="positive everywhere"):
        prob.operator({"coefficient": a})  # before any solver work
    with pytest.raises(ValueError, match="positive everywhere"):
        prob.solve({"coefficient": a})
    # Under jit the check runs with the computation.
    with pytest.raises(Exception, match="positive everywhere"):
        jax.block_until_ready(jax.jit(lambda p: prob.rhs(p))({"coefficient": a}))


def test_catalogue_samples_and_interface():
    key = jr.PRNGKey(1)
    darcy = Darcy(16)
    p = darcy.sample_parameters(key)
    a = np.asarray(p["coefficient"])
    assert set(np.unique(a)) == {3.0, 12.0}
    assert 0.15 < np.mean(a == 12.0) < 0.85  # zero-mean GRF thresholded at 0
    assert darcy.inputs(p).shape == (1, 16, 16)
    assert darcy.outputs(p, jnp.zeros((16, 16))).shape == (1, 16, 16)
    assert darcy.features(p).shape == (64,)
    logn = Darcy(16, coefficient="lognormal", log_sigma=0.5)
    b = logn.sample_parameters(key)["coefficient"]
    assert jnp.all(b > 0) and 0.3 < jnp.std(jnp.log(b)) < 0.7
    helm = Helmholtz((12, 10), wavenumber=(4.0, 6.0))
    q = helm.sample_parameters(key)
    assert 4.0 <= q["wavenumber"] <= 6.0 and q["medium"].shape == (12, 10)
    assert helm.scalar_parameters(q).shape == (1,) and helm.inputs(q).shape == (1, 12, 10)
    cd = ConvectionDiffusion(8, 3, speed=(2.0, 3.0))
    r = cd.sample_parameters(key)
    assert 2.0 <= jnp.linalg.norm(r["velocity"]) <= 3.0
    assert cd.inputs(r).shape == (4, 8, 8, 8)
    pois = Poisson(16, 1)
    assert pois.sample_parameters(key)["source"].shape == (16,)
    for prob in (darcy, logn, helm, cd, pois):
        assert json.loads(json.dumps(prob.config()))["name"] == prob.name
        assert prob.grid_shape == prob.grid.shape
    assert (Poisson.name, Darcy.name, Helmholtz.name, ConvectionDiffusion.name) == (
        "poisson", "darcy", "helmholtz", "convection_diffusion"
    )
    assert isinstance(darcy.default_solver(), jl.DeflatedCG)
    assert isinstance(pois.default_solver(), jl.DeflatedCG)
    assert isinstance(helm.default_solver(), jl.GCRODR)
    assert isinstance(cd.default_solver(), jl.GCRODR)
    with pytest.raises(ValueError, match="recycling solver"):
        darcy.solve(p, solver=lx.LU(), recycle=jl.RecycleSpace)


@pytest.mark.parametrize(
    "prob",
    [
        Helmholtz(12, wavenumber=(6.0, 8.0)),
        ConvectionDiffusion(
            12, speed=(5.0, 10.0), boundary=[Dirichlet(), (Robin(1.0, 1.0), Neumann())]
        ),
    ],
    ids=["helmholtz", "convection_diffusion"],
)
@pytest.mark.slow
def test_solve_vmap_matches_scipy(prob):
    """The default solver (GCRO-DR) under jit + vmap agrees with a sparse direct solve."""
    params = jax.vmap(prob.sample_parameters)(jr.split(jr.PRNGKey(2), 3))
    sols = jax.jit(jax.vmap(lambda p: prob.solve(p)))(params)
    assert sols.value.shape == (3, 12, 12)
    assert jnp.all(sols.result == lx.RESULTS.successful)
    for i in range(3):
        p = jax.tree_util.tree_map(lambda x: x[i], params)  # noqa: B023
        ref = spla.spsolve(to_scipy(prob.operator(p)).tocsc(), np.asarray(prob.rhs(p)).ravel())
        np.testing.assert_allclose(
            sols.value[i].ravel(), ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max()
        )
    assert np.all(sols.stats["residual"] <= 1.01e-8)
    assert np.all(sols.stats["num_matvecs"] > 0)


@pytest.mark.slow
def test_solve_sequence_interface():
    """What `jaxnum.data` does: one recycled, similarity-ordered sequence (Darcy,
    DeflatedCG), against sparse direct solves."""
    prob = Darcy(16)
    params = jax.vmap(prob.sample_parameters)(jr.split(jr.PRNGKey(3), 4))
    rhs = jax.vmap(prob.rhs)(params)
    seq = jl.solve_sequence(
        prob.operator, params, rhs, prob.default_solver(), features=prob.features
    )
    for i in range(4):
        p = jax.tree_util.tree_map(lambda x: x[i], params)  # noqa: B023
        ref = spla.spsolve(to_scipy(prob.operator(p)).tocsc(), np.asarray(rhs[i]).ravel())
        np.testing.assert_allclose(seq.value[i].ravel(), ref, rtol=1e-6)
    assert seq.recycle is not None and bool(seq.recycle.active)


@pytest.mark.slow
def test_solve_with_recycle_3d():
    """`solve(recycle=...)` carries a space from one system to the next (3D Darcy)."""
    prob = Darcy(10, 3, coefficient="lognormal", log_sigma=0.5)
    p1, p2 = (prob.sample_parameters(k) for k in jr.split(jr.PRNGKey(11)))
    solve = jax.jit(lambda p, r: prob.solve(p, recycle=r))
    first = solve(p1, prob.default_solver().empty_recycle(prob.operator(p1)))
    second = solve(p2, first.stats["recycle"])
    assert bool(second.stats["carried"])
    for p, sol in ((p1, first), (p2, second)):
        ref = spla.spsolve(to_scipy(prob.operator(p)).tocsc(), np.asarray(prob.rhs(p)).ravel())
        np.testing.assert_allclose(sol.value.ravel(), ref, rtol=1e-6)


# --- gradients ---------------------------------------------------------------------


def _fd(fn, x, t, eps):
    return (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps)


def test_gradient_wrt_coefficient_field_and_source():
    """Adjoint gradients through the default solver (DeflatedCG) against central
    differences; one compiled function gives both the values and the gradients."""
    prob = Darcy(10, coefficient="lognormal", rtol=1e-12)
    log_a = jnp.log(prob.sample_parameters(jr.PRNGKey(4))["coefficient"])
    f = 1.0 + jnp.cos(3.0 * prob.grid.coordinates()[1])
    target = 0.01 * jnp.sin(prob.grid.coordinates()[0] * 3.0)

    @jax.jit
    @jax.value_and_grad
    def misfit(x):
        log_a, f = x
        u = prob.solve({"coefficient": jnp.exp(log_a), "source": f}).value
        return 0.5 * jnp.sum((u - target) ** 2)

    _, (g_a, g_f) = misfit((log_a, f))
    t = jr.normal(jr.PRNGKey(5), log_a.shape)
    value = lambda x: misfit(x)[0]
    fd_a = (value((log_a + 1e-4 * t, f)) - value((log_a - 1e-4 * t, f))) / 2e-4
    np.testing.assert_allclose(jnp.vdot(g_a, t), fd_a, rtol=1e-6)
    fd_f = (value((log_a, f + 1e-4 * t)) - value((log_a, f - 1e-4 * t))) / 2e-4
    np.testing.assert_allclose(jnp.vdot(g_f, t), fd_f, rtol=1e-7)
    # The source gradient is A^{-T} (u - target) exactly (A symmetric).
    p = {"coefficient": jnp.exp(log_a), "source": f}
    A = np.asarray(prob.operator(p).as_matrix())
    u = np.linalg.solve(A, np.asarray(prob.rhs(p)).ravel())
    ref = np.linalg.solve(A.T, u - np.asarray(target).ravel())
    np.testing.assert_allclose(np.asarray(g_f).ravel(), ref, rtol=1e-8, atol=1e-14)


@pytest.mark.slow
def test_gradient_wrt_wavenumber_and_boundary_value():
    prob = Helmholtz(10, wavenumber=(6.0, 8.0), rtol=1e-12)
    p = prob.sample_parameters(jr.PRNGKey(9))

    @jax.jit
    @jax.value_and_grad
    def loss(k):
        return jnp.sum(prob.solve({**p, "wavenumber": k}).value ** 2)

    k = p["wavenumber"]
    _, g = loss(k)
    fd = (loss(k + 1e-5)[0] - loss(k - 1e-5)[0]) / 2e-5
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    assert abs(g) > 0
    # Through an inhomogeneous Dirichlet value of the finite-volume operator (dense
    # solve: the boundary term enters the right-hand side).
    grid = Grid(12)

    @jax.jit
    @jax.value_and_grad
    def wall(g0):
        op, bc = finite_volume_operator(grid, (Dirichlet(g0), Neumann(0.3)), diffusion=2.0)
        return jnp.sum(lx.linear_solve(op, 1.0 + bc, lx.LU()).value ** 2)

    fd = (wall(0.5 + 1e-4)[0] - wall(0.5 - 1e-4)[0]) / 2e-4
    np.testing.assert_allclose(wall(0.5)[1], fd, rtol=1e-7)


def test_float32_operator():
    prob = Darcy(8)
    p64 = prob.sample_parameters(jr.PRNGKey(0))
    p32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), p64)
    op = prob.operator(p32)
    assert op.weights.dtype == jnp.float32 and prob.rhs(p32).dtype == jnp.float32
    u = jr.normal(jr.PRNGKey(1), (8, 8))
    np.testing.assert_allclose(
        op.mv(u.astype(jnp.float32)), prob.operator(p64).mv(u), rtol=1e-5, atol=1e-3
    )
