"""Two-level (subdomain) deflation in GMRES and GCRO-DR: `coarse_blocks`."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import jaxnum.linalg as jl
from jaxnum._families import gaussian_random_field
from jaxnum.linalg._coarse import build_projector

from .helpers import finite_difference_jvp
from .test_deflated_cg import block_matrix, counted, spsolve


@functools.partial(jax.jit, static_argnums=(0,))
def convdiff(shape, velocity, seed=0):
    """Upwind convection-diffusion with a log-normal coefficient (non-symmetric)."""
    log_a = gaussian_random_field(jr.PRNGKey(seed), 1, shape)[0]
    v = jnp.broadcast_to(
        jnp.asarray(velocity).reshape((-1,) + (1,) * len(shape)), (len(shape), *shape)
    )
    return jl.convection_diffusion_operator(jnp.exp(log_a), v)


@pytest.mark.parametrize(
    "shape, blocks, velocity",
    [((24, 16), (8, 4), (30.0, -20.0)), ((6, 8, 4), (3, 4, 2), (5.0, -8.0, 12.0))],
)
def test_projector_is_exact(shape, blocks, velocity):
    op = convdiff(shape, velocity, seed=3)
    proj, probes = jax.jit(lambda o: build_projector(o.mv, shape, blocks, jnp.float64))(op)
    assert probes == 2 * len(shape) + 1
    A = np.asarray(jax.jit(lambda o: o.as_matrix())(op))
    assert not np.allclose(A, A.T)
    Z = block_matrix(shape, blocks)
    E = Z.T @ A @ Z
    mu = np.asarray(jr.normal(jr.PRNGKey(1), (Z.shape[1],)))
    v = np.asarray(jr.normal(jr.PRNGKey(2), shape))
    azmu, pv = jax.jit(lambda p, mu, v: (p.apply(mu), p.project(v)))(
        proj, jnp.asarray(mu), jnp.asarray(v)
    )
    scale = np.abs(A).max()
    np.testing.assert_allclose(np.asarray(proj.Einv), np.linalg.inv(E), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(azmu).ravel(), A @ Z @ mu, atol=1e-11 * scale)
    P = np.eye(A.shape[0]) - A @ Z @ np.linalg.solve(E, Z.T)
    np.testing.assert_allclose(np.asarray(pv).ravel(), P @ v.ravel(), atol=1e-10 * scale)
    # Z^T P = 0: the deflated residual has no block-constant component.
    np.testing.assert_allclose(Z.T @ np.asarray(pv).ravel(), 0.0, atol=1e-9 * scale)
    assert bool(proj.ok)


# GCRO-DR + coarse against spsolve is also in the (default) sequence test below.
@pytest.mark.parametrize("kind", ["gmres", pytest.param("gcrodr", marks=pytest.mark.slow)])
def test_coarse_solve_matches_spsolve_and_counts(kind):
    shape = (32, 32)
    op = convdiff(shape, (20.0, 10.0), seed=1)
    b = jnp.ones(shape)
    if kind == "gmres":
        solver = jl.GMRES(rtol=1e-10, atol=0.0, restart=20, coarse_blocks=4)
        plain = jl.GMRES(rtol=1e-10, atol=0.0, restart=20)
    else:
        solver = jl.GCRODR(rtol=1e-10, atol=0.0, restart=20, recycle=6, coarse_blocks=4)
        plain = jl.GCRODR(rtol=1e-10, atol=0.0, restart=20, recycle=6)
    counter = [0]
    sol = lx.linear_solve(counted(op, counter), b, solver)
    jax.effects_barrier()
    assert sol.result == lx.RESULTS.successful
    # Every application counted: the 5 probes, the iterations, and the 2 of the finish.
    assert int(sol.stats["num_matvecs"]) == counter[0]
    ref = spsolve(op, b)
    assert np.linalg.norm(np.asarray(sol.value) - ref) <= 1e-8 * np.linalg.norm(ref)
    res = np.linalg.norm(np.asarray(b - op.mv(sol.value))) / np.linalg.norm(np.asarray(b))
    assert res <= 1e-10
    np.testing.assert_allclose(float(sol.stats["residual"]), res, rtol=1e-3, atol=1e-14)
    # The block space removes the slow smooth modes of this diffusion-dominated
    # operator: far fewer products than without it (measured 225 vs 580 for GMRES,
    # 207 vs 447 for GCRO-DR).
    n_plain = int(lx.linear_solve(op, b, plain).stats["num_matvecs"])
    assert 2 * counter[0] < n_plain, (counter[0], n_plain)


def test_coarse_gcrodr_sequence_matches_independent_solves():
    shape = (16, 16)
    log_a = gaussian_random_field(jr.PRNGKey(4), 5, shape)
    v = jnp.broadcast_to(jnp.asarray([15.0, -5.0]).reshape(2, 1, 1), (2, *shape))

    def make(p):
        return jl.convection_diffusion_operator(jnp.exp(p), v)

    b = jnp.ones(shape)
    solver = jl.GCRODR(rtol=1e-10, atol=0.0, restart=16, recycle=4, coarse_blocks=4)
    seq = jl.solve_sequence(make, log_a, b, solver, order="similarity")
    assert np.all(np.asarray(seq.stats["residual"]) <= 1e-10)
    for i in range(5):
        ref = spsolve(make(log_a[i]), b)
        np.testing.assert_allclose(np.asarray(seq.value[i]), ref, rtol=1e-7, atol=1e-12)
    # The carried space lives in the deflated problem of the last system solved:
    # P A U = C with C orthonormal.
    space = seq.recycle
    U, C = np.asarray(space.basis), np.asarray(space.image)
    np.testing.assert_allclose(C.T @ C, np.eye(C.shape[1]), atol=1e-10)
    last = make(log_a[int(seq.order[-1])])
    proj, _ = build_projector(last.mv, shape, (4, 4), jnp.float64)
    PAU = jax.vmap(lambda u: proj.project(last.mv(u.reshape(shape))).ravel())(jnp.asarray(U.T))
    np.testing.assert_allclose(np.asarray(PAU).T, C, atol=1e-9)


@pytest.mark.parametrize(
    "solver",
    [
        jl.GMRES(rtol=1e-12, atol=0.0, restart=12, coarse_blocks=4),
        pytest.param(
            jl.GCRODR(rtol=1e-12, atol=0.0, restart=12, recycle=4, coarse_blocks=4),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_gradient_through_coarse_solver(solver):
    shape = (12, 12)
    base = gaussian_random_field(jr.PRNGKey(5), 1, shape)[0]
    v = jnp.broadcast_to(jnp.asarray([8.0, 4.0]).reshape(2, 1, 1), (2, *shape))
    b = jnp.sin(jnp.arange(144.0).reshape(shape))

    def loss(theta):
        op = jl.convection_diffusion_operator(jnp.exp(base + theta), v)
        x = lx.linear_solve(op, b, solver).value
        return jnp.sum(x**2)

    theta = 0.1 * jnp.cos(jnp.arange(144.0)).reshape(shape)
    t = jr.normal(jr.PRNGKey(6), shape)
    g = jax.grad(loss)(theta)
    fd = finite_difference_jvp(loss, theta, t)
    np.testing.assert_allclose(float(jnp.vdot(g, t)), float(fd), rtol=1e-5)


def test_coarse_vmap_matches_single_solves():
    shape = (16, 16)
    log_a = gaussian_random_field(jr.PRNGKey(8), 3, shape)
    v = jnp.broadcast_to(jnp.asarray([10.0, 5.0]).reshape(2, 1, 1), (2, *shape))
    solver = jl.GMRES(rtol=1e-10, atol=0.0, restart=16, coarse_blocks=(4, 8))

    def solve(p):
        op = jl.convection_diffusion_operator(jnp.exp(p), v)
        sol = lx.linear_solve(op, jnp.ones(shape), solver)
        return sol.value, sol.stats["num_matvecs"]

    xs, mvs = jax.jit(jax.vmap(solve))(log_a)
    for i in range(3):
        ref = spsolve(jl.convection_diffusion_operator(jnp.exp(log_a[i]), v), jnp.ones(shape))
        np.testing.assert_allclose(np.asarray(xs[i]), ref, rtol=1e-7, atol=1e-12)
    assert np.all(np.asarray(mvs) > 5 + 2)


def test_coarse_with_preconditioner_and_initial_guess():
    shape = (16, 16)
    op = convdiff(shape, (10.0, 5.0), seed=5)
    b = jnp.cos(jnp.arange(256.0)).reshape(shape)
    ref = spsolve(op, b)
    solver = jl.GMRES(rtol=1e-10, atol=0.0, restart=16, coarse_blocks=4)
    solve = jax.jit(lambda o, y0: lx.linear_solve(op, b, solver, options=o | {"y0": y0}))
    plain = solve({}, jnp.zeros(shape))
    # Right preconditioning: the solver works on P A M; x = x̂ + Z E^-1 Z^T (b - A x̂).
    pre = solve({"preconditioner": jl.jacobi(op)}, jnp.zeros(shape))
    # Starting from the solution up to 1e-3: fewer products, the same answer.
    warm = solve({}, jnp.asarray(ref) * (1 + 1e-3 * jnp.sin(jnp.arange(256.0)).reshape(shape)))
    for sol in (plain, pre, warm):
        assert sol.result == lx.RESULTS.successful
        np.testing.assert_allclose(np.asarray(sol.value), ref, rtol=1e-7, atol=1e-12)
    assert int(warm.stats["num_matvecs"]) < int(plain.stats["num_matvecs"])


def test_coarse_float32_smoke():
    shape = (16, 16)
    op = convdiff(shape, (10.0, 5.0), seed=2)
    op = jl.StencilOperator(op.weights.astype(jnp.float32))
    b = jnp.ones(shape, jnp.float32)
    sol = lx.linear_solve(op, b, jl.GMRES(rtol=1e-5, atol=0.0, coarse_blocks=4), throw=False)
    assert sol.value.dtype == jnp.float32
    assert sol.result == lx.RESULTS.successful
    assert float(sol.stats["residual"]) <= 1e-5


def test_wrong_stencil_is_not_silently_wrong():
    # A 9-point operator breaks the probes' reach-one assumption: the solve must not
    # report success with a wrong answer (the finish checks the true residual).
    shape = (16, 16)
    op = convdiff(shape, (10.0, 5.0), seed=2)

    def mv(u):
        diag = u + 0.3 * jnp.roll(jnp.roll(u, 1, 0), 1, 1) * (jnp.arange(16) > 0)[:, None]
        return op.mv(u) + 10.0 * diag

    nine = lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct(shape, jnp.float64))
    b = jnp.ones(shape)
    sol = lx.linear_solve(nine, b, jl.GMRES(rtol=1e-9, atol=0.0, coarse_blocks=4), throw=False)
    res = np.linalg.norm(np.asarray(b - mv(sol.value))) / np.linalg.norm(np.asarray(b))
    np.testing.assert_allclose(float(sol.stats["residual"]), res, rtol=1e-6, atol=1e-14)
    if sol.result == lx.RESULTS.successful:
        assert res <= 1e-9
    else:
        assert sol.result == lx.RESULTS.breakdown


def test_coarse_bad_input():
    shape = (16, 16)
    op = convdiff(shape, (10.0, 5.0))
    b = jnp.ones(shape)
    with pytest.raises(ValueError, match="does not divide"):
        lx.linear_solve(op, b, jl.GMRES(rtol=1e-8, atol=0.0, coarse_blocks=5))
    with pytest.raises(ValueError, match="one block edge per axis|entries"):
        lx.linear_solve(op, b, jl.GCRODR(rtol=1e-8, atol=0.0, coarse_blocks=(4, 4, 4)))
    with pytest.raises(ValueError, match="positive int"):
        jl.GMRES(rtol=1e-8, atol=0.0, coarse_blocks=0)
    with pytest.raises(ValueError, match="positive int"):
        jl.GCRODR(rtol=1e-8, atol=0.0, coarse_blocks=(4, -1))
    periodic = jl.StencilOperator(op.weights, periodic=True)
    with pytest.raises(ValueError, match="periodic"):
        lx.linear_solve(periodic, b, jl.GMRES(rtol=1e-8, atol=0.0, coarse_blocks=4))
    tree = lx.FunctionLinearOperator(
        lambda t: (t[0], t[1]), (jax.ShapeDtypeStruct((4,), jnp.float64),) * 2
    )
    with pytest.raises(ValueError, match="PyTree"):
        lx.linear_solve(tree, (jnp.ones(4), jnp.ones(4)), jl.GMRES(rtol=1e-8, atol=0.0, coarse_blocks=2))
    # Non-finite input: a non-successful result, not a crash or garbage.
    sol = lx.linear_solve(op, b.at[3, 3].set(jnp.nan), jl.GMRES(rtol=1e-8, atol=0.0, coarse_blocks=4),
                          throw=False)
    assert sol.result == lx.RESULTS.nonfinite_input


@pytest.mark.parametrize("kind", ["gmres", "gcrodr"])
def test_coarse_nonfinite_guess_reports_nan_residual(kind):
    # A NaN in the initial guess: non-finite input, and no residual (NaN), as
    # without coarse deflation (the coarse finish reported the residual of the
    # sanitised solve, 2.8, beside `nonfinite_input`).
    op = convdiff((16, 16), (1.0, 0.5))
    b = jnp.ones((16, 16))
    if kind == "gmres":
        solver = jl.GMRES(rtol=1e-10, atol=0.0, restart=20, coarse_blocks=4)
    else:
        solver = jl.GCRODR(rtol=1e-10, atol=0.0, restart=20, recycle=6, coarse_blocks=4)
    sol = lx.linear_solve(op, b, solver, options={"y0": b.at[0, 0].set(jnp.nan)}, throw=False)
    assert sol.result == lx.RESULTS.nonfinite_input
    assert np.isnan(float(sol.stats["residual"]))
