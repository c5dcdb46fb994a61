"""Small default-suite variants of the slow linalg tests (session 11): bad input,
non-convergence, honest product counts, recycle-space invariants with the default
settings, exact restart counts, and gradients with a carried space.

Kept apart from `test_krylov.py` so that the two files run on different workers
(`pytest -n 2 --dist loadfile`); the tests here share one compiled program per
solver (see below).
"""

import dataclasses
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxnum.linalg as jl
from jaxnum.linalg._arnoldi import Cycle
from jaxnum.linalg._gcrodr import harmonic_ritz_harvest

from .helpers import random_matrix, solve_jit, spd_with_small_cluster

RTOL = 1e-10


# ------------------------------------------- small default-suite variants (session 11)
# Every test below solves systems of SMALL unknowns through `solve_jit` with the
# solvers of `_small_solver` and operators from `_counted`, which all share one
# structure: each solver compiles once (twice with `throw=True`) for the whole
# module. `max_steps` is an array (traced, not static), so the non-convergence
# checks reuse the same program.
SMALL = 64  # 8 x 8 grids
_MATVECS = [0]


def _tally(x):
    _MATVECS[0] += 1  # under `vmap` the callback runs once per column


def _tally_identity(x):
    jax.debug.callback(_tally, x)
    return x


_TALLY = lx.FunctionLinearOperator(_tally_identity, jax.ShapeDtypeStruct((SMALL,), jnp.float64))


def _counted(A, tags=()):
    """`A` as an operator that adds every application to `_MATVECS[0]`."""
    return lx.TaggedLinearOperator(_TALLY @ lx.MatrixLinearOperator(jnp.asarray(A)), tags)


def _small_solver(name, max_steps=10 * SMALL):
    steps = jnp.asarray(max_steps)
    return {
        "gmres": lambda: jl.GMRES(rtol=RTOL, atol=0.0, restart=8, max_steps=steps),
        "gcrodr": lambda: jl.GCRODR(rtol=RTOL, atol=0.0, restart=16, recycle=6, max_steps=steps),
        "cg": lambda: jl.CG(rtol=RTOL, atol=0.0, max_steps=steps),
        "dcg": lambda: jl.DeflatedCG(rtol=RTOL, atol=0.0, recycle=6, max_steps=steps),
    }[name]()


def _small_tags(name):
    return lx.positive_semidefinite_tag if name in ("cg", "dcg") else ()


@eqx.filter_jit
def _solve_throw_jit(op, b, solver, options):
    return lx.linear_solve(op, b, solver, options=options, throw=True)


def _small_solve(op, b, solver, space=None, throw=False):
    """One solve; recycling solvers always get a space (empty without `space`), so
    that first and carried solves share a program."""
    options = {}
    if hasattr(solver, "empty_recycle"):
        options["recycle"] = solver.empty_recycle(op) if space is None else space
    sol = (_solve_throw_jit if throw else solve_jit)(op, jnp.asarray(b), solver, options)
    jax.block_until_ready(sol.value)
    return sol


def _counted_solve(op, b, solver, space=None):
    """`_small_solve` and the number of operator applications it made."""
    jax.effects_barrier()
    _MATVECS[0] = 0
    sol = _small_solve(op, b, solver, space)
    jax.effects_barrier()
    return sol, _MATVECS[0]


def test_solvers_pass_through_plain_jit_as_arguments():
    # Fields that fix shapes or choose code paths are static (session 17): under
    # `jax.jit` with the solver as an argument, GMRES's `restart` used to be traced
    # and fail with a TracerBoolConversionError (as `lineax.GMRES`'s does).
    rng = np.random.default_rng(5)
    A = random_matrix(rng, SMALL, "nonsymmetric", 10.0)
    S = random_matrix(rng, SMALL, "spd", 10.0)
    b = rng.standard_normal(SMALL)

    @partial(jax.jit, static_argnames="tags")
    def solve(M, b, solver, tags):
        return lx.linear_solve(lx.MatrixLinearOperator(M, tags), b, solver, throw=False)

    psd = lx.positive_semidefinite_tag
    cases = [
        (A, jl.GMRES(rtol=1e-10, atol=0.0, restart=16, reorthogonalize=True), ()),
        (A, jl.GCRODR(rtol=1e-10, atol=0.0, restart=16, recycle=6, harvest_every=2,
                      projection_dtype=jnp.float32, basis_dtype=jnp.float32), ()),
        (S, jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=4, deflation="init"), psd),
    ]
    for M, solver, tags in cases:
        sol = solve(jnp.asarray(M), jnp.asarray(b), solver, tags)
        assert sol.result == lx.RESULTS.successful
        assert np.linalg.norm(b - M @ np.asarray(sol.value)) <= 1.01e-10 * np.linalg.norm(b)


@pytest.mark.parametrize("name", ["gmres", "gcrodr", "cg", "dcg"])
def test_small_right_hand_sides_of_any_scale(name):
    # In float32 the squared norm of a right-hand side of ~1e-20 underflows and that
    # of ~1e20 overflows: before session 17 every solver returned x = 0 as converged
    # for both. The solvers now work on b / s (s a power of two), which is exact: in
    # float64 a scaled right-hand side gives the scaled answer to the last bit.
    rng = np.random.default_rng(21)
    A = random_matrix(rng, SMALL, "spd" if name in ("cg", "dcg") else "nonsymmetric", 10.0)
    b = rng.standard_normal(SMALL)
    kw = {"recycle": 6} if name == "dcg" else {"restart": 16, "recycle": 6} if name == "gcrodr" else {}
    cls = {"gmres": jl.GMRES, "gcrodr": jl.GCRODR, "cg": jl.CG, "dcg": jl.DeflatedCG}[name]
    op32 = lx.MatrixLinearOperator(jnp.asarray(A, jnp.float32), _small_tags(name))
    solver32 = cls(rtol=1e-5, atol=0.0, **kw)
    x_ref = np.linalg.solve(A, b)
    for scale in (1e-20, 1e20):
        rhs = jnp.asarray(b * scale, jnp.float32)
        sol = lx.linear_solve(op32, rhs, solver32, throw=False)
        assert sol.result == lx.RESULTS.successful
        x = np.asarray(sol.value, np.float64) / scale
        np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-3 * np.abs(x_ref).max())
        assert float(sol.stats["residual"]) <= 1e-5
    plain = _small_solve(_counted(A, _small_tags(name)), b, _small_solver(name))
    scaled = _small_solve(_counted(A, _small_tags(name)), b * 2.0**-60, _small_solver(name))
    np.testing.assert_array_equal(np.asarray(scaled.value) * 2.0**60, np.asarray(plain.value))
    assert int(scaled.stats["num_matvecs"]) == int(plain.stats["num_matvecs"])


@pytest.mark.parametrize("name", ["gmres", "gcrodr", "cg", "dcg"])
def test_small_nonfinite_input_and_nonconvergence_are_reported(name):
    A = np.diag(np.linspace(1.0, 6.0, SMALL))
    op = _counted(A, _small_tags(name))
    solver, few = _small_solver(name), _small_solver(name, max_steps=3)
    b = jnp.ones(SMALL)
    bad = b.at[3].set(jnp.nan)
    sol = _small_solve(op, bad, solver)
    assert sol.result == lx.RESULTS.nonfinite_input
    # No residual of a system with a NaN in it (it read 0.0, a perfect solve).
    assert np.isnan(float(sol.stats["residual"]))
    sol = _small_solve(op, b, few)
    assert sol.result == lx.RESULTS.max_steps_reached
    assert float(sol.stats["residual"]) > 1e-3
    # throw=True: a success passes, both failures raise.
    sol = _small_solve(op, b, solver, throw=True)
    np.testing.assert_allclose(np.asarray(sol.value), 1.0 / np.diag(A), rtol=1e-8)
    with pytest.raises(Exception, match="non-finite|nonfinite|NaN|inf"):
        _small_solve(op, bad, solver, throw=True)
    with pytest.raises(Exception, match="maximum number of solver steps"):
        _small_solve(op, b, few, throw=True)


@pytest.mark.parametrize("name", ["gmres", "cg"])
def test_nan_tolerance_is_refused_or_never_met(name):
    # A NaN `rtol` is refused at construction; a traced one (computed at run time)
    # is never met, and the solve ends non-successful. GMRES's restart loop used to
    # spin forever: no cycle took a step, and no exit test fired.
    cls = {"gmres": jl.GMRES, "cg": jl.CG}[name]
    with pytest.raises(ValueError, match="rtol"):
        cls(rtol=float("nan"), atol=0.0)
    A = np.diag(np.linspace(1.0, 6.0, SMALL))
    op = lx.MatrixLinearOperator(jnp.asarray(A), _small_tags(name))
    solver = cls(rtol=jnp.asarray(jnp.nan), atol=0.0, max_steps=jnp.asarray(40))
    sol = _small_solve(op, jnp.ones(SMALL), solver)
    assert sol.result != lx.RESULTS.successful
    assert int(sol.stats["num_matvecs"]) <= 41


@pytest.mark.parametrize("name", ["gmres", "gcrodr", "cg", "dcg"])
def test_small_matvec_count_is_honest(name):
    # Two related systems; the recycling solvers carry the first one's space into
    # the second, whose count must include the `recycle` products that re-project
    # it for the new operator (and, for DeflatedCG, the Rayleigh-Ritz products).
    rng = np.random.default_rng(13)
    kind = "spd" if name in ("cg", "dcg") else "nonsymmetric"
    A = random_matrix(rng, SMALL, kind, cond=10.0)
    solver = _small_solver(name)
    space = None
    for i in range(2):
        A_i = A + 0.01 * i * np.eye(SMALL)
        b = rng.standard_normal(SMALL)
        sol, count = _counted_solve(_counted(A_i, _small_tags(name)), b, solver, space)
        assert sol.result == lx.RESULTS.successful
        np.testing.assert_allclose(np.asarray(sol.value), np.linalg.solve(A_i, b), rtol=1e-7)
        assert int(sol.stats["num_matvecs"]) == count
        if "recycle" in sol.stats:
            assert bool(sol.stats["carried"]) == (i == 1)
            space = sol.stats["recycle"]
    if name in ("gcrodr", "dcg"):
        assert count > 6  # the re-projection alone costs `recycle` = 6 products


def test_small_gcrodr_space_invariants_and_benefit():
    # The default settings (one classical Gram-Schmidt pass): after every solve of a
    # short sequence, A U = C for the operator just solved and C is orthonormal.
    rng = np.random.default_rng(14)
    n, k = 8, 6
    a = np.exp(0.5 * rng.standard_normal((n, n)))
    v = 8 * rng.standard_normal((2, n, n))
    solver = _small_solver("gcrodr")
    space, counts = None, []
    for i in range(3):
        op = jl.convection_diffusion_operator(jnp.asarray(a * (1 + 0.02 * i)), jnp.asarray(v))
        A = np.asarray(op.as_matrix())
        b = rng.standard_normal(SMALL)
        sol = _small_solve(_counted(A), b, solver, space)
        assert sol.result == lx.RESULTS.successful
        np.testing.assert_allclose(np.asarray(sol.value), np.linalg.solve(A, b), rtol=1e-7)
        assert bool(sol.stats["carried"]) == (i > 0)
        space = sol.stats["recycle"]
        U, C = np.asarray(space.basis), np.asarray(space.image)
        np.testing.assert_allclose(A @ U, C, atol=1e-9 * np.abs(A).max() * np.abs(U).max())
        np.testing.assert_allclose(C.T @ C, np.eye(k), atol=1e-10)
        counts.append(int(sol.stats["num_matvecs"]))
    assert max(counts[1:]) < counts[0], counts  # recycling pays on related systems


def test_small_deflated_cg_space_invariants_positive_and_negative_definite():
    # The same SPD sequence (a cluster of small eigenvalues, what deflation is for)
    # solved as A x = b tagged PSD and as (-A) x = -b tagged NSD. CG iterates with
    # -A in the second case, so the Rayleigh-Ritz refinement of the carried space
    # must too: then both give the same spaces and the same products per solve.
    # (Before session 11 the refinement used the NSD operator itself, kept the
    # eigenvectors of the *largest* eigenvalues of -A, and lost the benefit.)
    rng = np.random.default_rng(15)
    A0 = spd_with_small_cluster(rng, SMALL, small=4)
    E = rng.standard_normal((SMALL, SMALL))
    mats = [A0 + 1e-5 * (i + 1) * (E @ E.T) / SMALL for i in range(4)]
    b = rng.standard_normal(SMALL)
    counts = {}
    for sign, tag in ((1.0, lx.positive_semidefinite_tag), (-1.0, lx.negative_semidefinite_tag)):
        solver = _small_solver("dcg")
        space, counts[sign] = None, []
        for i, A in enumerate(mats):
            sol = _small_solve(_counted(sign * A, tag), sign * b, solver, space)
            assert sol.result == lx.RESULTS.successful
            ref = np.linalg.solve(A, b)
            assert np.linalg.norm(np.asarray(sol.value) - ref) <= 1e-5 * np.linalg.norm(ref)
            assert float(sol.stats["residual"]) <= RTOL * 1.0001
            assert bool(sol.stats["carried"]) == (i > 0)
            space = sol.stats["recycle"]
            counts[sign].append(int(sol.stats["num_matvecs"]))
            if i == 0:
                continue
            W, AW = np.asarray(space.basis), np.asarray(space.image)
            # The image is that of the operator itself; unit columns.
            np.testing.assert_allclose(sign * A @ W, AW, atol=1e-10 * np.abs(A).max())
            np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, rtol=1e-10)
            # Ritz vectors of the smallest eigenvalues of the SPD A = sign * operator.
            ev = np.linalg.eigvalsh(A)
            rq = np.sort(np.diag(W.T @ A @ W))
            np.testing.assert_allclose(rq[:4], ev[:4], rtol=0.05)
    psd, nsd = np.asarray(counts[1.0]), np.asarray(counts[-1.0])
    assert np.all(psd[1:] < 0.9 * psd[0]), psd  # deflation pays (measured 108 -> 80)
    assert np.all(nsd[1:] < 0.9 * nsd[0]), nsd
    assert np.all(np.abs(nsd - psd) <= 2), (psd, nsd)


def test_gmres_num_restarts_counts_cycles():
    # GMRES(m) against a plain numpy GMRES(m) (Arnoldi with modified Gram-Schmidt,
    # least squares by `lstsq`, exact residual after each step): the same number of
    # cycles, and the products add up: (cycles - 1) full cycles of m, the steps of
    # the last one, and the one true residual that confirms convergence.
    m = 8
    A = np.diag(np.linspace(1.0, 6.0, SMALL))
    b = np.ones(SMALL)

    def reference():
        x, r, tol = np.zeros(SMALL), b.copy(), RTOL * np.linalg.norm(b)
        for cycle in range(1, 100):
            beta = np.linalg.norm(r)
            V, H = np.zeros((SMALL, m + 1)), np.zeros((m + 1, m))
            V[:, 0] = r / beta
            for j in range(m):
                w = A @ V[:, j]
                for i in range(j + 1):
                    H[i, j] = V[:, i] @ w
                    w = w - H[i, j] * V[:, i]
                H[j + 1, j] = np.linalg.norm(w)
                V[:, j + 1] = w / H[j + 1, j]
                y = np.linalg.lstsq(H[: j + 2, : j + 1], beta * np.eye(j + 2)[0], rcond=None)[0]
                if np.linalg.norm(r - A @ (V[:, : j + 1] @ y)) <= tol:
                    return cycle, j + 1
            x = x + V[:, :m] @ y
            r = b - A @ x
        raise AssertionError("the reference did not converge")

    cycles, last = reference()
    assert cycles >= 3
    sol = _small_solve(_counted(A), b, _small_solver("gmres"))
    assert sol.result == lx.RESULTS.successful
    assert int(sol.stats["num_restarts"]) == cycles - 1
    assert int(sol.stats["num_matvecs"]) == (cycles - 1) * m + last + 1


@pytest.mark.parametrize(
    "case", ["dtype", "inf-rhs", "nan-operator", "breakdown-throw", "sequence-throw"]
)
def test_bad_input_is_reported(case):
    rng = np.random.default_rng(16)
    A = random_matrix(rng, SMALL, "nonsymmetric", cond=10.0)
    b = jnp.asarray(rng.standard_normal(SMALL))
    if case == "dtype":
        with pytest.raises(ValueError, match="structures do not match.*float32"):
            _small_solve(_counted(A), b.astype(jnp.float32), _small_solver("gmres"))
    elif case == "inf-rhs":
        sol = _small_solve(_counted(A), b.at[5].set(jnp.inf), _small_solver("gmres"))
        assert sol.result == lx.RESULTS.nonfinite_input
    elif case == "nan-operator":
        A[7, 3] = np.nan
        sol = _small_solve(_counted(A), b, _small_solver("gmres"))
        assert sol.result != lx.RESULTS.successful
        assert sol.result == lx.RESULTS.breakdown
        assert not np.isfinite(float(sol.stats["residual"]))
    elif case == "breakdown-throw":
        # An indefinite matrix falsely tagged PSD: CG meets p^T A p <= 0.
        D = np.diag(np.linspace(1.0, 4.0, SMALL))
        D[1, 1] = -1.0
        rhs = np.zeros(SMALL)
        rhs[1] = 1.0
        op = _counted(D, lx.positive_semidefinite_tag)
        assert _small_solve(op, rhs, _small_solver("cg")).result == lx.RESULTS.breakdown
        with pytest.raises(Exception, match="breakdown"):
            _small_solve(op, rhs, _small_solver("cg"), throw=True)
    elif case == "sequence-throw":
        params = jnp.asarray([1.0, 2.0, 0.0])  # the last system is singular (A = 0)
        make = lambda p: lx.MatrixLinearOperator(p * jnp.eye(4))
        solver = jl.GMRES(1e-8, 0.0, restart=4)
        seq = jl.solve_sequence(make, params, jnp.ones(4), solver, order="given", throw=False)
        ok = np.asarray(seq.result == lx.RESULTS.successful)
        np.testing.assert_array_equal(ok, [True, True, False])
        with pytest.raises(Exception, match="solve_sequence: at least one system"):
            jax.block_until_ready(
                jl.solve_sequence(make, params, jnp.ones(4), solver, order="given").value
            )


@pytest.mark.parametrize(
    "symmetric",
    # 8 s (GCRO-DR compiled twice: with the space, and transposed without it): slow.
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["nonsymmetric", "symmetric"],
)
def test_gradient_through_a_gcrodr_solve_with_a_carried_space(symmetric):
    # lineax differentiates a solve by a solve with the transposed operator, through
    # `GCRODR.transpose`: it must drop a carried space for a non-symmetric operator
    # (U, C belong to A, not A^T) and may keep it for a symmetric one. Either way
    # the gradient of a loss of x(theta) matches central finite differences.
    rng = np.random.default_rng(17)
    n = 6
    a0 = jnp.asarray(np.exp(0.3 * rng.standard_normal((n, n))))
    v = jnp.asarray(5 * rng.standard_normal((2, n, n)))
    target = jnp.asarray(rng.standard_normal((n, n)))
    solver = jl.GCRODR(rtol=1e-11, atol=0.0, restart=12, recycle=4, adaptive=False)

    def make(theta):
        a = a0 * jnp.exp(theta)
        return jl.diffusion_operator(a) if symmetric else jl.convection_diffusion_operator(a, v)

    @jax.jit
    def value_and_grad(theta, space):
        def loss(theta):
            sol = lx.linear_solve(make(theta), jnp.ones((n, n)), solver, options={"recycle": space})
            return jnp.sum((sol.value - target) ** 2), (sol.stats["recycle"], sol.stats["carried"])

        return jax.value_and_grad(loss, has_aux=True)(theta)

    theta = jnp.asarray(0.1 * rng.standard_normal((n, n)))
    d = jnp.asarray(rng.standard_normal((n, n)))
    # A real space, harvested from a nearby operator.
    (_, (space, carried)), _ = value_and_grad(theta + 0.05, solver.empty_recycle(make(theta)))
    assert bool(space.active) and not bool(carried)
    _, transposed = solver.transpose(make(theta), {"recycle": space})
    assert ("recycle" in transposed) == symmetric
    (_, (_, carried)), g = value_and_grad(theta, space)
    assert bool(carried)
    (plus, _), _ = value_and_grad(theta + 1e-6 * d, space)
    (minus, _), _ = value_and_grad(theta - 1e-6 * d, space)
    np.testing.assert_allclose(jnp.vdot(g, d), (plus - minus) / 2e-6, rtol=1e-6)
    assert value_and_grad._cache_size() == 1


def _two_clusters(seed, cond):
    """A symmetric matrix with two tight eigenvalue clusters, at 1 and at 1/cond:
    Krylov methods converge in a few steps, to an attainable accuracy of about
    `cond * eps`, and one pass of classical Gram-Schmidt loses orthogonality."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((SMALL, SMALL)))
    ev = np.where(np.arange(SMALL) % 2 == 0, 1.0, 1.0 / cond) * (1 + 0.01 * np.arange(SMALL) / SMALL)
    return (q * ev) @ q.T, rng.standard_normal(SMALL)


@pytest.mark.parametrize("name", ["gmres", "gcrodr", "cg", "dcg"])
def test_small_unattainable_tolerance_stops_as_stagnation(name):
    # The true residual cannot fall below ~cond * eps, far above RTOL = 1e-10, while
    # the recurrence residual keeps falling and keeps triggering confirmations that
    # fail. The solvers must notice the floor and report stagnation early, with the
    # floor's residual, instead of spending all of `max_steps` (before session 12
    # GMRES, CG and DeflatedCG used all 640 products here, and the last two reported
    # `max_steps_reached`).
    A, b = _two_clusters(11, 1e7 if name == "gcrodr" else 1e10)
    sol = _small_solve(_counted(A, _small_tags(name)), b, _small_solver(name))
    assert sol.result == lx.RESULTS.stagnation
    assert int(sol.stats["num_matvecs"]) < 0.5 * 10 * SMALL
    # The reported residual is the true one (to the rounding of computing it, which
    # at the floor is a few per cent), and it is at the floor, not garbage.
    x = np.asarray(sol.value)
    true_res = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
    np.testing.assert_allclose(float(sol.stats["residual"]), true_res, rtol=0.1)
    assert RTOL < true_res < 1e-4
    with pytest.raises(Exception, match="stagnation"):
        _small_solve(_counted(A, _small_tags(name)), b, _small_solver(name), throw=True)


def test_small_gcrodr_harvest_survives_a_basis_that_lost_orthogonality():
    # Two clusters 1e6 apart: one classical Gram-Schmidt pass leaves the first
    # cycle's basis far from orthonormal. The harvest used to assume it was, handed
    # on a C that was not orthonormal, and GCRO-DR stagnated at 1.5e-8 after 27
    # products where GMRES converges. It now converges, with an exact pair.
    A, b = _two_clusters(11, 1e6)
    solver = _small_solver("gcrodr")
    sol = _small_solve(_counted(A), b, solver)
    assert sol.result == lx.RESULTS.successful
    assert int(sol.stats["num_matvecs"]) <= 40
    space = sol.stats["recycle"]
    U, C = np.asarray(space.basis), np.asarray(space.image)
    np.testing.assert_allclose(C.T @ C, np.eye(C.shape[1]), atol=1e-8)
    np.testing.assert_allclose(A @ U, C, atol=1e-6 * np.abs(U).max())
    # Far past the attainable accuracy (cond 1e9-1e11) GCRO-DR cannot converge, but
    # it must get as close as GMRES does (~cond * eps) and say so. Until session 17 a
    # first cycle whose harvest failed handed on C = its first k Arnoldi vectors with
    # U = 0, the recurrence came loose from the true residual, and the solve returned
    # the start (cond 1e10, 1e11) or stopped at 1e-4 (cond 1e9).
    for cond in (1e9, 1e10, 1e11):
        A, b = _two_clusters(11, cond)
        sol = _small_solve(_counted(A), b, solver)
        assert sol.result != lx.RESULTS.successful
        x = np.asarray(sol.value)
        true_res = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
        np.testing.assert_allclose(float(sol.stats["residual"]), true_res, rtol=0.1)
        ref = _small_solve(_counted(A), b, _small_solver("gmres"))
        assert true_res < 3 * float(ref.stats["residual"])
        assert true_res < 1e3 * cond * np.finfo(np.float64).eps


def test_small_gcrodr_drops_a_carried_space_that_makes_it_stagnate():
    # A float32 `C` carried to a related operator (the two-cluster matrix with its
    # eigenvectors rotated by ~1e-3) made the solve stagnate far above the
    # tolerance: at 2.6e-2 (cond 1e6) and 0.27 (cond 1e7) before session 17, where a
    # fresh solve reaches ~1e-10. The solve now drops such a space once and goes on
    # from its best iterate without it.
    solver = jl.GCRODR(
        rtol=RTOL, atol=0.0, restart=16, recycle=6, max_steps=jnp.asarray(10 * SMALL),
        harvest_every=2, projection_dtype=jnp.float32, basis_dtype=jnp.float32,
    )
    rng = np.random.default_rng(2)
    for cond in (1e6, 1e7):
        A, b = _two_clusters(11, cond)
        q, r = np.linalg.qr(np.eye(SMALL) + 1e-3 * rng.standard_normal((SMALL, SMALL)))
        q = q * np.sign(np.diagonal(r))[None, :]
        A2 = q @ A @ q.T
        first = _small_solve(_counted(A), b, solver)
        carried = _small_solve(_counted(A2), b, solver, space=first.stats["recycle"])
        fresh = _small_solve(_counted(A2), b, solver)
        x = np.asarray(carried.value)
        true_res = np.linalg.norm(b - A2 @ x) / np.linalg.norm(b)
        # (the reported residual is the true one, to the rounding of computing it)
        np.testing.assert_allclose(
            float(carried.stats["residual"]), true_res, rtol=0.1, atol=cond * 1e-16
        )
        assert true_res < max(10 * float(fresh.stats["residual"]), 1e-9)
        assert int(carried.stats["num_matvecs"]) < 0.5 * 10 * SMALL


def test_small_deflated_cg_stops_deflating_when_a_carried_space_diverges():
    # The deflation space of the two-cluster matrix (eigenvalues at 1 and 1e-6),
    # carried to the same matrix with its eigenvectors rotated by ~1e-3: deflated CG
    # fell to ~1e-7 and then diverged, ending at a residual of ~4e3 after all of
    # `max_steps` (before session 17), where plain CG reaches the attainable accuracy
    # (~1e-10 here) in ~30 steps. It now drops W at the divergence and gets as close.
    A, b = _two_clusters(11, 1e6)
    rng = np.random.default_rng(2)
    q, r = np.linalg.qr(np.eye(SMALL) + 1e-3 * rng.standard_normal((SMALL, SMALL)))
    A2 = (q * np.sign(np.diagonal(r))[None, :]) @ A @ (q * np.sign(np.diagonal(r))[None, :]).T
    A2 = 0.5 * (A2 + A2.T)
    solver = _small_solver("dcg")
    tags = _small_tags("dcg")
    first = _small_solve(_counted(A, tags), b, solver)
    assert first.result == lx.RESULTS.successful
    sol = _small_solve(_counted(A2, tags), b, solver, space=first.stats["recycle"])
    assert bool(sol.stats["carried"])
    plain = _small_solve(_counted(A2, tags), b, _small_solver("cg"))
    x = np.asarray(sol.value)
    true_res = np.linalg.norm(b - A2 @ x) / np.linalg.norm(b)
    # (the reported residual is the true one, to the rounding of computing it)
    np.testing.assert_allclose(float(sol.stats["residual"]), true_res, rtol=0.1, atol=1e-10)
    assert true_res < max(3 * float(plain.stats["residual"]), RTOL)
    assert int(sol.stats["num_matvecs"]) < 0.2 * 10 * SMALL


def test_small_gcrodr_failed_first_harvest_hands_on_no_space():
    # A first cycle (no C yet) too short to choose k vectors from: the harvest fails
    # and must return an empty pair (U = C = 0, `have` False), never a C without U.
    n, k, size = SMALL, 6, 16
    rng = np.random.default_rng(3)
    V = np.linalg.qr(rng.standard_normal((n, size + 1)))[0].T
    H = np.triu(rng.standard_normal((size + 1, size)), -1)
    cycle = Cycle(
        V=jnp.asarray(V), H=jnp.asarray(H), B=jnp.zeros((0, size)), y=jnp.zeros(size),
        estimate=jnp.asarray(1.0), steps=jnp.asarray(k - 2), breakdown=jnp.asarray(False),
    )
    zeros = jnp.zeros((k, n))
    grams = (jnp.zeros((k, k)), jnp.zeros((k, k)))
    U, C, have, _ = harmonic_ritz_harvest(k)(zeros, zeros, jnp.asarray(False), grams, cycle)
    assert not bool(have)
    np.testing.assert_array_equal(np.asarray(U), 0.0)
    np.testing.assert_array_equal(np.asarray(C), 0.0)




def _float32_storage_sequence(solver, seed):
    """Three related convection-diffusion solves with a float64 operator and a solver
    that stores blocks in float32: each answer meets the float64 tolerance on the
    true residual (one cycle here converges by ~1e10, far more than float32 storage
    allows, so the recurrence must be replaced by true residuals), counts are honest,
    the pair handed on is float64 with A U = C and C orthonormal to float32
    accuracy, and carrying still pays. Returns the last (A, b, space)."""
    rng = np.random.default_rng(seed)
    n = 8
    a = np.exp(0.5 * rng.standard_normal((n, n)))
    v = 8 * rng.standard_normal((2, n, n))
    space, counts = None, []
    for i in range(3):
        op = jl.convection_diffusion_operator(jnp.asarray(a * (1 + 0.02 * i)), jnp.asarray(v))
        A = np.asarray(op.as_matrix())
        b = rng.standard_normal(SMALL)
        sol, count = _counted_solve(_counted(A), b, solver, space)
        assert sol.result == lx.RESULTS.successful
        assert int(sol.stats["num_matvecs"]) == count
        x = np.asarray(sol.value)
        assert x.dtype == np.float64
        true_res = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
        assert true_res <= RTOL
        np.testing.assert_allclose(float(sol.stats["residual"]), true_res, rtol=1e-3)
        xs = np.linalg.solve(A, b)  # norm-wise: rtol 1e-10 and cond(A) ~ 1e3
        assert np.linalg.norm(x - xs) <= 1e-6 * np.linalg.norm(xs)
        space = sol.stats["recycle"]
        U, C = np.asarray(space.basis), np.asarray(space.image)
        assert U.dtype == C.dtype == np.float64
        np.testing.assert_allclose(C.T @ C, np.eye(C.shape[1]), atol=1e-6)
        np.testing.assert_allclose(A @ U, C, atol=1e-5)
        counts.append(count)
    assert max(counts[1:]) < counts[0], counts
    return A, b, space


def _lowered_text(A, b, solver, space):
    return jax.jit(
        lambda b: lx.linear_solve(_counted(A), b, solver, options={"recycle": space}).value
    ).lower(jnp.asarray(b)).as_text()


def test_small_gcrodr_float32_projection_keeps_float64_answers():
    # `projection_dtype=float32` holds C (and the projection against it) in float32
    # while x, U and the Krylov vectors stay float64.
    solver = jl.GCRODR(
        rtol=RTOL, atol=0.0, restart=16, recycle=6, max_steps=jnp.asarray(10 * SMALL),
        projection_dtype=jnp.float32,
    )
    A, b, space = _float32_storage_sequence(solver, 14)
    # The option takes effect: the compiled solve holds C as float32 rows.
    assert f"tensor<6x{SMALL}xf32>" in _lowered_text(A, b, solver, space)


def test_small_gcrodr_float32_basis_keeps_float64_answers():
    # `basis_dtype=float32` stores the Arnoldi basis of the cycles between harvests
    # in float32 (with `projection_dtype`, C too); harvesting cycles keep float64,
    # so the pair handed on is as exact as with a float32 C alone.
    solver = jl.GCRODR(
        rtol=RTOL, atol=0.0, restart=12, recycle=4, max_steps=jnp.asarray(10 * SMALL),
        harvest_every=2, projection_dtype=jnp.float32, basis_dtype=jnp.float32,
    )
    A, b, space = _float32_storage_sequence(solver, 15)
    # The option takes effect: the compiled solve has a float32 Arnoldi basis (the
    # first chunk of 8 steps: 9 rows of the 8 x 8 grid) besides the float64 one.
    text = _lowered_text(A, b, solver, space)
    assert f"tensor<9x{SMALL}xf32>" in text and f"tensor<9x{SMALL}xf64>" in text


def test_small_gmres_float32_basis_keeps_float64_answers():
    # Mixed-precision GMRES: the basis in float32, the answer to the float64
    # tolerance on the true residual (each cycle is a step of iterative refinement),
    # honest counts, and about the products of the float64 solver.
    rng = np.random.default_rng(16)
    n = 8
    a = np.exp(0.5 * rng.standard_normal((n, n)))
    v = 8 * rng.standard_normal((2, n, n))
    A = np.asarray(
        jl.convection_diffusion_operator(jnp.asarray(a), jnp.asarray(v)).as_matrix()
    )
    b = rng.standard_normal(SMALL)
    base = jl.GMRES(rtol=RTOL, atol=0.0, restart=8, max_steps=jnp.asarray(10 * SMALL))
    low = dataclasses.replace(base, basis_dtype=jnp.float32)  # a static field
    counts = []
    for solver in (base, low):
        sol, count = _counted_solve(_counted(A), b, solver)
        assert sol.result == lx.RESULTS.successful
        assert int(sol.stats["num_matvecs"]) == count
        x = np.asarray(sol.value)
        true_res = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
        assert true_res <= RTOL
        np.testing.assert_allclose(float(sol.stats["residual"]), true_res, rtol=1e-3)
        xs = np.linalg.solve(A, b)  # norm-wise: rtol 1e-10 and cond(A) ~ 1e3
        assert np.linalg.norm(x - xs) <= 1e-6 * np.linalg.norm(xs)
        counts.append(count)
    assert counts[1] <= 1.2 * counts[0], counts
    text = jax.jit(lambda b: lx.linear_solve(_counted(A), b, low).value).lower(
        jnp.asarray(b)
    ).as_text()
    assert f"tensor<9x{SMALL}xf32>" in text and f"tensor<9x{SMALL}xf64>" not in text


@pytest.mark.parametrize("bad", [jnp.int32, "nonsense"])
@pytest.mark.parametrize("field", ["projection_dtype", "basis_dtype"])
def test_gcrodr_storage_dtypes_must_be_floating(bad, field):
    with pytest.raises(ValueError, match=f"{field}.*real floating dtype"):
        jl.GCRODR(rtol=1e-8, atol=0.0, harvest_every=4, **{field: bad})
    if field == "basis_dtype":
        with pytest.raises(ValueError, match="basis_dtype.*real floating dtype"):
            jl.GMRES(rtol=1e-8, atol=0.0, basis_dtype=bad)


def test_gcrodr_float32_basis_needs_cycles_between_harvests():
    with pytest.raises(ValueError, match="harvest_every"):
        jl.GCRODR(rtol=1e-8, atol=0.0, basis_dtype=jnp.float32)


@pytest.mark.parametrize("cond", [1e3, 1e5])
@pytest.mark.parametrize("storage", ["projection", "both"])
def test_small_gcrodr_float32_projection_never_fails_silently(cond, storage):
    # Where the deflated eigenvalues lie far below the rest, a float32 C costs
    # products (cond 1e3) or stagnates (cond 1e5: ~2e-3 in session 13), with or
    # without a float32 basis between harvests. Either way the result and the
    # residual must be honest: success only at the tolerance, and the reported
    # residual is the true one.
    A, b = _two_clusters(11, cond)
    extra = {} if storage == "projection" else {"basis_dtype": jnp.float32, "harvest_every": 2}
    solver = jl.GCRODR(
        rtol=RTOL, atol=0.0, restart=16, recycle=6, max_steps=jnp.asarray(10 * SMALL),
        projection_dtype=jnp.float32, **extra,
    )
    first = _small_solve(_counted(A), b, solver)
    assert first.result == lx.RESULTS.successful
    b2 = b[::-1].copy()
    sol = _small_solve(_counted(A), b2, solver, first.stats["recycle"])
    x = np.asarray(sol.value)
    true_res = np.linalg.norm(b2 - A @ x) / np.linalg.norm(b2)
    np.testing.assert_allclose(float(sol.stats["residual"]), true_res, rtol=0.1)
    if sol.result == lx.RESULTS.successful:
        assert true_res <= RTOL
    else:
        assert sol.result == lx.RESULTS.stagnation
        assert true_res > RTOL


# ------------------------------------------------- batched Arnoldi cycles (session 18)
@pytest.mark.parametrize(
    "projected, reorthogonalize, basis_dtype",
    [(False, False, None), (True, True, None), (True, False, jnp.float32)],
)
def test_arnoldi_cycle_under_vmap_matches_one_system_at_a_time(
    projected, reorthogonalize, basis_dtype
):
    # The batched cycle (`_arnoldi._batched_cycle`) runs the systems in lockstep:
    # each must take exactly the steps it takes alone (different step limits, an
    # early exit on the estimate, a breakdown) and produce the same cycle.
    from jaxnum.linalg._arnoldi import arnoldi_cycle

    rng = np.random.default_rng(18)
    n, size, k = 24, 12, 3
    A = np.stack([random_matrix(rng, n, "nonsymmetric", cond=30.0) for _ in range(4)])
    A[2] = np.eye(n)  # r is an eigenvector: breakdown after one step
    A[3] = np.eye(n) + 0.05 * rng.standard_normal((n, n))  # converges fast
    r = rng.standard_normal((4, n))
    limit = np.array([size, 5, size, size])
    beta = np.linalg.norm(r, axis=1)
    tol = np.array([0.0, 0.0, 0.0, 1e-6 * beta[3]])  # system 3 exits on the estimate
    Ct = np.linalg.qr(rng.standard_normal((4, n, k)))[0].transpose(0, 2, 1)
    if projected:  # as in GCRO-DR, the cycle starts from r orthogonal to C
        r -= np.einsum("bkn,bk->bn", Ct, np.einsum("bkn,bn->bk", Ct, r))
        beta = np.linalg.norm(r, axis=1)
        tol[3] = 1e-6 * beta[3]

    def cycle(A, r, beta, Ct, limit, tol):
        A = jnp.asarray(A)
        return arnoldi_cycle(
            lambda v: A @ v, lambda v: v, r, beta, Ct if projected else None, limit, size,
            tol, reorthogonalize, basis_dtype,
        )

    args = tuple(jnp.asarray(a) for a in (A, r, beta, Ct, limit, tol))
    batched = jax.jit(jax.vmap(cycle))(*args)
    for i in range(4):
        alone = jax.jit(cycle)(*(a[i] for a in args))
        assert int(batched.steps[i]) == int(alone.steps), i
        assert bool(batched.breakdown[i]) == bool(alone.breakdown), i
        for field in ("V", "H", "B", "y", "estimate"):
            np.testing.assert_allclose(
                getattr(batched, field)[i], getattr(alone, field), rtol=1e-6, atol=1e-9,
                err_msg=f"system {i}, {field}",
            )
    steps = [int(s) for s in batched.steps]
    assert steps[:2] == [size, 5] and 1 < steps[3] < size
    if basis_dtype is None:  # (a float32 basis hides the breakdown below its rounding)
        assert steps[2] == 1 and bool(batched.breakdown[2])
    # A shared operator (unbatched matrix) and a nested vmap take the same rule.
    shared = jax.jit(jax.vmap(cycle, in_axes=(None, 0, 0, 0, 0, 0)))(args[0][0], *args[1:])
    nested = jax.jit(jax.vmap(jax.vmap(cycle)))(*(jnp.stack([a, a]) for a in args))
    for i in range(4):
        alone = jax.jit(cycle)(args[0][0], *(a[i] for a in args[1:]))
        assert int(shared.steps[i]) == int(alone.steps)
        np.testing.assert_allclose(shared.y[i], alone.y, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(nested.y[1, i], batched.y[i], rtol=1e-12, atol=1e-12)
    if not projected:
        # Forward mode through the cycle itself (not through lineax) takes the plain
        # cycle: `jacfwd` (a vmap of JVPs) against central differences.
        def y_of(r):
            return cycle(args[0][0], r, jnp.linalg.norm(r), args[3][0], size, 0.0).y

        jac = jax.jit(jax.jacfwd(y_of))(args[1][0])
        eps, y_jit = 1e-6, jax.jit(y_of)
        fd = jnp.stack([
            (y_jit(args[1][0].at[j].add(eps)) - y_jit(args[1][0].at[j].add(-eps))) / (2 * eps)
            for j in range(3)
        ], axis=1)
        np.testing.assert_allclose(jac[:, :3], fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["gmres", "gcrodr-f32"])
def test_solves_under_vmap_match_one_at_a_time(name):
    # Whole solves under `vmap`: the batched cycles sit inside batched `while_loop`s
    # and `lax.cond`s (GCRO-DR's first, plain cycle; its harvest every other cycle
    # with a float32 basis); answers and counts match the systems solved one by one.
    rng = np.random.default_rng(19)
    n = 8
    solver = {
        "gmres": jl.GMRES(rtol=1e-10, atol=0.0, restart=10, max_steps=2000),
        "gcrodr": jl.GCRODR(rtol=1e-10, atol=0.0, restart=12, recycle=4, max_steps=2000),
        "gcrodr-f32": jl.GCRODR(
            rtol=1e-10, atol=0.0, restart=12, recycle=4, max_steps=2000, harvest_every=2,
            projection_dtype=jnp.float32, basis_dtype=jnp.float32,
        ),
    }[name]
    a = jnp.asarray(np.exp(0.5 * rng.standard_normal((3, n, n))))
    v = jnp.asarray(4 * rng.standard_normal((3, 2, n, n)))
    v = v.at[1].multiply(5.0)  # a harder system: the others wait for it
    b = jnp.asarray(rng.standard_normal((n, n)))

    def solve(a, v):
        sol = lx.linear_solve(jl.convection_diffusion_operator(a, v), b, solver, throw=False)
        return sol.value, sol.result == lx.RESULTS.successful, sol.stats["num_matvecs"]

    x, ok, matvecs = jax.jit(jax.vmap(solve))(a, v)
    for i in range(3):
        xi, oki, mi = jax.jit(solve)(a[i], v[i])
        assert bool(ok[i]) and bool(oki)
        np.testing.assert_allclose(x[i], xi, rtol=1e-7, atol=1e-9 * float(jnp.abs(xi).max()))
        assert abs(int(matvecs[i]) - int(mi)) <= 2, (i, matvecs, mi)
    assert len({int(m) for m in matvecs}) > 1  # the systems did take different paths


def test_lockstep_while_matches_plain_loop_vmap_and_jvp():
    # `_batching.lockstep_while`: a loop that writes one row of a buffer per step,
    # masked by `run`; systems with different trip counts under `vmap`, a closed-over
    # batched array, and forward mode (its tangent included) against the plain loop.
    from jax import lax

    from jaxnum.linalg._batching import lockstep_while

    def solve(scale, stop, use_lockstep):
        def cond(c):
            i, _, x = c
            return (i < stop) & (x < 50.0)

        def body(c, run):
            i, buf, x = c
            row = jnp.full(3, x) * scale
            if run is not None:
                row = jnp.where(run, row, buf[i])
            return i + 1, buf.at[i].set(row), x * 1.5 + scale

        init = (jnp.array(0), jnp.zeros((8, 3)), jnp.array(1.0))
        if use_lockstep:
            return lockstep_while(cond, body, init, (False, True, False))
        return lax.while_loop(cond, lambda c: body(c, None), init)

    scales = jnp.array([0.5, 2.0, 7.0])
    stops = jnp.array([8, 3, 8])
    batched = jax.jit(jax.vmap(lambda s, t: solve(s, t, True)))(scales, stops)
    plain = jax.jit(jax.vmap(lambda s, t: solve(s, t, False)))(scales, stops)
    for got, want in zip(batched, plain):
        np.testing.assert_array_equal(got, want)
    assert len({int(i) for i in batched[0]}) == 3  # three different trip counts
    # Forward mode through the closed-over `scale`, alone and under vmap (jacfwd).
    d_lock = jax.jacfwd(lambda s: solve(s, 8, True)[1])(0.5)
    d_plain = jax.jacfwd(lambda s: solve(s, 8, False)[1])(0.5)
    np.testing.assert_allclose(d_lock, d_plain, rtol=1e-12)
    assert float(jnp.abs(d_plain).max()) > 0


def test_deflated_cg_under_vmap_matches_one_at_a_time():
    # DeflatedCG harvests into an eigCG window carried by its inner loop; under
    # `vmap` that loop runs in lockstep (`lockstep_while`). Answers, products and the
    # harvested spaces match the systems solved one by one, with and without a
    # carried space.
    rng = np.random.default_rng(21)
    n = 8
    a = jnp.asarray(np.exp(1.0 * rng.standard_normal((3, n, n))))
    b = jnp.asarray(rng.standard_normal((n, n)))
    solver = jl.DeflatedCG(rtol=1e-10, atol=0.0, recycle=4, max_steps=2000)

    def solve(a, space):
        op = lx.TaggedLinearOperator(jl.diffusion_operator(a), lx.positive_semidefinite_tag)
        options = {"recycle": solver.empty_recycle(op) if space is None else space}
        sol = lx.linear_solve(op, b, solver, options=options, throw=False)
        ok = sol.result == lx.RESULTS.successful
        return sol.value, ok, sol.stats["num_matvecs"], sol.stats["recycle"]

    x, ok, mv, spaces = jax.jit(jax.vmap(lambda a: solve(a, None)))(a)
    assert bool(spaces.active.all())  # a space was harvested
    x2, ok2, mv2, _ = jax.jit(jax.vmap(solve))(a[::-1], spaces)  # carried spaces
    one = jax.jit(solve)
    for i in range(3):
        xi, oki, mi, si = one(a[i], None)
        assert bool(ok[i]) and bool(oki)
        np.testing.assert_allclose(x[i], xi, rtol=1e-7, atol=1e-9 * float(jnp.abs(xi).max()))
        assert abs(int(mv[i]) - int(mi)) <= 2
        # The same harvested subspace (principal angles ~0).
        qa, qb = np.linalg.qr(np.asarray(spaces.basis[i]))[0], np.linalg.qr(np.asarray(si.basis))[0]
        assert np.linalg.svd(qa.T @ qb, compute_uv=False).min() > 1 - 1e-6
        space_i = jax.tree.map(lambda s, i=i: s[i], spaces)
        xj, okj, mj, _ = one(a[2 - i], space_i)
        assert bool(ok2[i]) and bool(okj)
        np.testing.assert_allclose(x2[i], xj, rtol=1e-7, atol=1e-9 * float(jnp.abs(xj).max()))
        assert abs(int(mv2[i]) - int(mj)) <= 2
