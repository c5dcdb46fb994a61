"""Spectral operators, the semilinear diffrax solvers and the time-dependent problems."""

import json

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import mpmath
import numpy as np
import pytest
import scipy.integrate

import jaxnum.linalg as jl
import jaxnum.pde as P

# --- spectral operators ---------------------------------------------------------------


def test_derivatives_exact_on_trigonometric_polynomials():
    n, L = 32, 3.0
    (x,) = P.grid_points((n,), L)
    k = 2 * np.pi / L
    u = np.sin(3 * k * x) + 0.5 * np.cos(5 * k * x)
    du = 3 * k * np.cos(3 * k * x) - 2.5 * k * np.sin(5 * k * x)
    d2u = -9 * k**2 * np.sin(3 * k * x) - 12.5 * k**2 * np.cos(5 * k * x)
    np.testing.assert_allclose(P.derivative(jnp.asarray(u), length=L), du, atol=1e-11)
    np.testing.assert_allclose(P.derivative(jnp.asarray(u), order=2, length=L), d2u, atol=1e-9)
    np.testing.assert_allclose(P.laplacian(jnp.asarray(u), length=L), d2u, atol=1e-9)
    # 2D: d/dy only sees the y dependence; the inverse of the Laplacian undoes it.
    X, Y = P.grid_points((16, 24), (1.0, 2.0))
    f = np.sin(2 * np.pi * X) * np.cos(2 * np.pi * 2 * Y / 2.0)
    fy = -np.sin(2 * np.pi * X) * 2 * np.pi * np.sin(2 * np.pi * Y)
    np.testing.assert_allclose(P.derivative(jnp.asarray(f), axis=1, length=(1.0, 2.0)), fy, atol=1e-11)
    psi = P.poisson_solve(jnp.asarray(f), (1.0, 2.0))
    np.testing.assert_allclose(-P.laplacian(psi, (1.0, 2.0)), f, atol=1e-11)
    np.testing.assert_allclose(psi, f / (8 * np.pi**2), atol=1e-13)


def test_spectral_accuracy_is_geometric():
    # exp(sin x) is analytic: the derivative error falls geometrically with n, far
    # faster than any power (a 2nd-order scheme would gain 4x per doubling).
    errors = []
    for n in (8, 16, 32):
        (x,) = P.grid_points((n,), 2 * np.pi)
        u = np.exp(np.sin(x))
        err = np.abs(P.derivative(jnp.asarray(u), length=2 * np.pi) - np.cos(x) * u).max()
        errors.append(err)
    assert errors[0] > 1e-3
    assert errors[1] < errors[0] * 1e-3
    assert errors[2] < 1e-12


def test_velocity_from_vorticity_and_dealias_mask():
    key = jr.PRNGKey(0)
    w = P.gaussian_random_field(key, (32, 32), alpha=2.5, tau=7.0)
    # Drop the Nyquist modes, which odd derivatives of a real field must discard.
    w = jnp.fft.irfft2(jnp.fft.rfft2(w) * P.dealias_mask((32, 32), 0.9), s=(32, 32))
    u, v = P.velocity_from_vorticity(w)
    div = P.derivative(u, axis=0) + P.derivative(v, axis=1)
    curl = P.derivative(v, axis=0) - P.derivative(u, axis=1)
    assert np.abs(div).max() < 1e-12
    # curl u = -Laplace psi = w (w has zero mean).
    np.testing.assert_allclose(curl, w - jnp.mean(w), atol=1e-10)
    mask = P.dealias_mask((12, 12))
    assert mask.shape == P.rfft_shape((12, 12)) == (12, 7)
    # |k| < 4 on both axes: k in {-3..3} x {0..3}.
    assert mask.sum() == 7 * 4
    with pytest.raises(ValueError, match="fraction"):
        P.dealias_mask((12,), 0.0)


# --- the ETDRK4 weights and solver ------------------------------------------------------


@pytest.mark.parametrize("z", [1e-9, 0.3 + 0.5j, -1j, 1.0, -1.5, 1.9j, 2.5j, -40.0, -1.0 + 0.0j])
def test_etdrk4_coefficients_against_mpmath(z):
    mpmath.mp.dps = 40
    zm = mpmath.mpc(z)
    e = mpmath.exp(zm)
    expected = [
        (mpmath.exp(zm / 2) - 1) / zm,
        (-4 - zm + e * (4 - 3 * zm + zm**2)) / zm**3,
        (2 + zm + e * (zm - 2)) / zm**3,
        (-4 - 3 * zm - zm**2 + e * (4 - zm)) / zm**3,
    ]
    real = isinstance(z, float)
    L = jnp.asarray([z], jnp.float64 if real else jnp.complex128)
    _, _, *got = P.etdrk4_coefficients(L, 1.0)
    for g, want in zip(got, expected):
        assert abs(complex(g[0]) - complex(want)) <= 1e-13 * max(1.0, abs(complex(want)))


def _scalar_problem():
    L = jnp.array([-200.0, -1.0, 0.0, 0.5])
    term = P.SemilinearTerm(L, lambda t, y, args: jnp.cos(y) + 0.1 * t)
    ref_term = diffrax.ODETerm(lambda t, y, args: L * y + jnp.cos(y) + 0.1 * t)
    ref = diffrax.diffeqsolve(
        ref_term, diffrax.Kvaerno5(), 0.0, 1.0, 1e-3, jnp.ones(4),
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12), max_steps=10000,
    ).ys[-1]
    return term, ref


@pytest.mark.slow
def test_etdrk4_fourth_order_and_stiffness():
    term, ref = _scalar_problem()

    @jax.jit
    def run(ts):
        return diffrax.diffeqsolve(
            term, P.ETDRK4(), 0.0, 1.0, None, jnp.ones(4),
            stepsize_controller=diffrax.StepTo(ts=ts), max_steps=64,
        ).ys[-1]

    errors = [float(jnp.abs(run(jnp.linspace(0.0, 1.0, n + 1)) - ref).max()) for n in (8, 16, 32)]
    # dt * L = -25 at the coarsest step: stable, and fourth order.
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 3.7), (errors, orders)
    assert errors[-1] < 1e-8
    # A non-uniform grid (recomputed weights on the odd steps) is as accurate.
    ts = jnp.sort(jnp.concatenate([jnp.linspace(0.0, 1.0, 33), jnp.array([0.51, 0.77])]))
    assert float(jnp.abs(run(ts) - ref).max()) < 2 * errors[-1]


def test_crank_nicolson_heun_second_order_diagonal():
    term, ref = _scalar_problem()

    def run(n):
        return diffrax.diffeqsolve(
            term, P.CrankNicolsonHeun(), 0.0, 1.0, 1.0 / n, jnp.ones(4), max_steps=None
        ).ys[-1]

    # Only the non-stiff components: CN is A- but not L-stable (the -200 mode rings).
    errors = [float(jnp.abs(run(n) - ref)[1:].max()) for n in (32, 64, 128)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.8) and np.all(orders < 2.3), orders


def test_semilinear_term_rejects_wrong_use():
    with pytest.raises((TypeError, ValueError), match="SemilinearTerm"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y), P.ETDRK4(), 0.0, 1.0, 0.1, jnp.ones(2)
        )
    op = P.laplacian_operator((8,), "dirichlet", 1.0)
    with pytest.raises(TypeError, match="diagonal"):
        diffrax.diffeqsolve(
            P.SemilinearTerm(op, lambda t, y, a: 0 * y), P.ETDRK4(), 0.0, 1.0, 0.1, jnp.ones(8)
        )


# --- Burgers ---------------------------------------------------------------------------


def _cole_hopf(x, t, nu, a=2.0, b=1.0):
    # u = -2 nu phi_x / phi with phi = a + b exp(-4 pi^2 nu t) cos(2 pi x) solving heat.
    decay = b * np.exp(-4 * np.pi**2 * nu * t)
    return -2 * nu * (-2 * np.pi * decay * np.sin(2 * np.pi * x)) / (a + decay * np.cos(2 * np.pi * x))


def test_burgers_against_cole_hopf_and_time_order():
    nu, n = 0.1, 64
    (x,) = P.grid_points((n,))
    params = {"u0": jnp.asarray(_cole_hopf(x, 0.0, nu)), "viscosity": jnp.asarray(nu)}
    errs = []
    for dt in (0.01, 0.005, 0.00125):
        prob = P.Burgers(n, viscosity=nu, num_saves=4, dt=dt)
        out = jax.jit(prob.solve)(params)
        assert out.shape == (1, 4, n)
        exact = np.stack([_cole_hopf(x, t, nu) for t in np.asarray(prob.save_times)])
        errs.append(np.abs(out[0] - exact).max())
    assert np.log2(errs[0] / errs[1]) > 3.5  # fourth order in time
    assert errs[2] < 1e-10  # spectral in space, tiny in time


def test_burgers_gradients_match_finite_differences(getkey):
    prob = P.Burgers(32, t_final=0.2, num_saves=2, viscosity_range=(0.05, 0.2))
    params = prob.sample_parameters(getkey())
    weights = jr.normal(getkey(), (1, 2, 32))

    def misfit(p):
        return jnp.sum(weights * prob.solve(p)) + 0.5 * jnp.sum(prob.solve(p) ** 2)

    grads = jax.jit(jax.grad(misfit))(params)
    f = jax.jit(misfit)
    eps = 1e-6
    fd_nu = (f({**params, "viscosity": params["viscosity"] + eps})
             - f({**params, "viscosity": params["viscosity"] - eps})) / (2 * eps)
    np.testing.assert_allclose(grads["viscosity"], fd_nu, rtol=1e-6)
    direction = jr.normal(getkey(), (32,))
    fd_u = (f({**params, "u0": params["u0"] + eps * direction})
            - f({**params, "u0": params["u0"] - eps * direction})) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grads["u0"], direction), fd_u, rtol=1e-6)
    # the parametric option reports its viscosity
    np.testing.assert_allclose(prob.scalar_parameters(params), [params["viscosity"]])
    assert 0.05 <= float(params["viscosity"]) <= 0.2


def test_burgers_vmap_jit_and_interface(getkey):
    prob = P.Burgers(32, t_final=0.1, num_saves=2)
    keys = jr.split(getkey(), 3)
    batch = jax.vmap(prob.sample_parameters)(keys)
    solve = jax.jit(jax.vmap(prob.solve))
    out = solve(batch)
    assert out.shape == (3, 1, 2, 32)
    single = jax.jit(prob.solve)(jax.tree.map(lambda a: a[1], batch))
    np.testing.assert_allclose(out[1], single, atol=1e-13)
    assert prob.inputs(jax.tree.map(lambda a: a[0], batch)).shape == (1, 32)
    assert prob.scalar_parameters(jax.tree.map(lambda a: a[0], batch)).shape == (0,)
    json.dumps(prob.config())
    np.testing.assert_allclose(prob.save_times, [0.05, 0.1])
    # an explicit diffrax solver on the same term agrees (complex Fourier state)
    explicit = P.Burgers(32, t_final=0.1, num_saves=2, solver=diffrax.Tsit5(), dt=5e-4)
    # (ETDRK4 at the default step is ~1e-8 accurate here; Tsit5 at dt=5e-4 more so.)
    np.testing.assert_allclose(jax.jit(explicit.solve)(jax.tree.map(lambda a: a[1], batch)), single, atol=3e-7)


def test_cfl_violations_are_refused_before_any_work(getkey):
    # Explicit solver, stiff diffusion: a ValueError at construction.
    with pytest.raises(ValueError, match="unstable for the Burgers diffusion"):
        P.Burgers(256, viscosity=0.1, solver=diffrax.Tsit5(), dt=1e-3)
    with pytest.raises(ValueError, match="CFL"):
        P.Advection(64, solver=diffrax.Bosh3(), dt=0.1)
    with pytest.raises(ValueError, match="unstable for the diffusion"):
        P.Heat(32, dt=0.01, solver=diffrax.Euler())
    # ETDRK4's explicit advection: the initial condition is checked before stepping,
    # mode by mode against the damping the viscosity adds.
    prob = P.Burgers(64, dt=0.01)
    x = jnp.arange(64) / 64
    nu = jnp.asarray(0.1)
    with pytest.raises(Exception, match="CFL violated for Burgers"):
        jax.block_until_ready(prob.solve({"u0": 50.0 * jnp.sin(2 * np.pi * x), "viscosity": nu}))
    # The same amplitude is accepted at a step that satisfies the criterion...
    ok = P.Burgers(64, dt=2e-4, t_final=0.002)
    assert jnp.all(jnp.isfinite(ok.solve({"u0": 50.0 * jnp.sin(2 * np.pi * x), "viscosity": nu})))
    # ...and without viscous damping the same step is refused for a milder field.
    with pytest.raises(Exception, match="CFL violated for Burgers"):
        jax.block_until_ready(prob.solve({"u0": 5.0 * jnp.sin(2 * np.pi * x), "viscosity": 0 * nu}))


# --- Navier-Stokes ---------------------------------------------------------------------


def test_navier_stokes_taylor_green_decay():
    n, nu = 32, 0.01
    x, y = P.grid_points((n, n))
    w0 = 2 * np.cos(2 * np.pi * x) * np.cos(2 * np.pi * y) + np.sin(2 * np.pi * (x + y)) * 0
    prob = P.NavierStokes2D(n, viscosity=nu, t_final=1.0, num_saves=2, forcing=False)
    out = jax.jit(prob.solve)({"w0": jnp.asarray(w0), "viscosity": jnp.asarray(nu)})
    # The Taylor-Green vortex is a steady Euler flow: it decays as exp(-8 pi^2 nu t).
    for i, t in enumerate(np.asarray(prob.save_times)):
        np.testing.assert_allclose(out[0, i], w0 * np.exp(-8 * np.pi**2 * nu * t), atol=1e-12)


def test_navier_stokes_forced_against_crank_nicolson_reference(getkey):
    n = 32
    prob = P.NavierStokes2D(n, t_final=1.0, num_saves=1, viscosity=1e-3)
    params = prob.sample_parameters(getkey())
    out = jax.jit(prob.solve)(params)[0, -1]
    # The FNO scheme (CN/Heun, spectral division) at a 20x smaller step.
    ref_prob = P.NavierStokes2D(
        n, t_final=1.0, num_saves=1, viscosity=1e-3, solver=P.CrankNicolsonHeun(),
        dt=prob.step / 20,
    )
    ref = jax.jit(ref_prob.solve)(params)[0, -1]
    assert float(jnp.abs(out - params["w0"]).max()) > 1e-2  # something happened
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert rel < 1e-5, rel
    # The mean vorticity is conserved (zero: the forcing has zero mean).
    assert abs(float(jnp.mean(out))) < 1e-13


# --- Kuramoto-Sivashinsky --------------------------------------------------------------


def test_kuramoto_sivashinsky_against_scipy_and_conserves_mean(getkey):
    n, L = 64, 22.0
    prob = P.KuramotoSivashinsky(n, length=L, t_final=4.0, num_saves=2, dt=0.01)
    u0 = prob.sample_parameters(getkey())["u0"] + 0.3
    out = jax.jit(prob.solve)({"u0": u0})
    # Independent reference: DOP853 on the same (dealiased) Fourier semi-discretisation
    # in numpy, with tight tolerances.
    k = 2 * np.pi / L * np.fft.rfftfreq(n, 1.0 / n)
    ik = 1j * k.copy()
    ik[-1] = 0.0
    mask = (np.fft.rfftfreq(n, 1.0 / n) < n / 3).astype(float)

    def rhs(t, y):
        v = y[: k.size] + 1j * y[k.size:]
        u = np.fft.irfft(v * mask, n)
        dv = (k**2 - k**4) * v - 0.5 * ik * mask * np.fft.rfft(u * u)
        return np.concatenate([dv.real, dv.imag])

    v0 = np.fft.rfft(np.asarray(u0))
    sol = scipy.integrate.solve_ivp(
        rhs, (0.0, 4.0), np.concatenate([v0.real, v0.imag]), method="DOP853",
        t_eval=np.asarray(prob.save_times), rtol=1e-11, atol=1e-11,
    )
    ref = np.fft.irfft((sol.y[: k.size] + 1j * sol.y[k.size:]).T, n)
    # Rough random data show ETDRK4's known stiff order reduction (measured ~2 here,
    # against ~3.5 for smooth data): 6e-6 at dt = 0.01.
    np.testing.assert_allclose(out[0], ref, atol=2e-5)
    assert np.abs(out[0] - ref).max() > 1e-9  # not trivially equal
    np.testing.assert_allclose(jnp.mean(out[0], axis=-1), jnp.mean(u0), atol=1e-13)


# --- advection ------------------------------------------------------------------------


def test_advection_is_an_exact_shift_and_conserves():
    n = 32
    X, Y = P.grid_points((n, n))
    u0 = np.sin(2 * np.pi * (X + 2 * Y)) + np.cos(2 * np.pi * 3 * X)
    prob = P.Advection(n, dims=2, velocity=(1.0, -0.5), t_final=0.7, num_saves=3)
    out = jax.jit(prob.solve)({"u0": jnp.asarray(u0), "speed": jnp.asarray(1.0)})
    for i, t in enumerate(np.asarray(prob.save_times)):
        Xs, Ys = X - t, Y + 0.5 * t
        exact = np.sin(2 * np.pi * (Xs + 2 * Ys)) + np.cos(2 * np.pi * 3 * Xs)
        np.testing.assert_allclose(out[0, i], exact, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(out[0] ** 2, axis=(1, 2)), np.sum(u0**2), rtol=1e-13)
    np.testing.assert_allclose(jnp.sum(out[0], axis=(1, 2)), np.sum(u0), atol=1e-10)


# --- heat and Fisher-KPP (finite differences, CG inside the step) ---------------------


def test_heat_second_order_and_against_exact_solution():
    n, D = 15, 0.1
    h = 1.0 / (n + 1)
    x = np.arange(1, n + 1) * h
    X, Y = np.meshgrid(x, x, indexing="ij")
    u0 = np.sin(np.pi * X) * np.sin(2 * np.pi * Y)
    # The sine mode is an exact eigenvector of the 5-point Laplacian.
    lam = D * 4 / h**2 * (np.sin(np.pi * h / 2) ** 2 + np.sin(np.pi * h) ** 2)
    params = {"u0": jnp.asarray(u0), "diffusivity": jnp.asarray(D)}
    errs = []
    for dt in (0.1, 0.05, 0.025):
        prob = P.Heat(n, diffusivity=D, num_saves=2, dt=dt)
        out = jax.jit(prob.solve)(params)
        discrete = np.stack([u0 * np.exp(-lam * t) for t in np.asarray(prob.save_times)])
        errs.append(np.abs(out[0] - discrete).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - 2) < 0.1), orders
    # Against the continuous solution exp(-5 pi^2 D t): O(h^2 + dt^2).
    exact = np.stack([u0 * np.exp(-5 * np.pi**2 * D * t) for t in np.asarray(prob.save_times)])
    assert np.abs(out[0] - exact).max() < 3e-3


@pytest.mark.slow
def test_heat_deflated_cg_and_gradients(getkey):
    prob = P.Heat(12, diffusivity=0.1, t_final=0.3, num_saves=1, dt=0.05)
    params = prob.sample_parameters(getkey())
    recycled = P.Heat(
        12, diffusivity=0.1, t_final=0.3, num_saves=1, dt=0.05,
        solver=P.CrankNicolsonHeun(jl.DeflatedCG(rtol=1e-10, atol=1e-14, recycle=4)),
    )
    np.testing.assert_allclose(jax.jit(recycled.solve)(params), jax.jit(prob.solve)(params), atol=1e-9)
    target = jr.normal(getkey(), (12, 12))

    def misfit(p):
        return jnp.sum((prob.solve(p)[0, -1] - target) ** 2)

    grads = jax.jit(jax.grad(misfit))(params)
    f = jax.jit(misfit)
    eps = 1e-6
    fd = (f({**params, "diffusivity": params["diffusivity"] + eps})
          - f({**params, "diffusivity": params["diffusivity"] - eps})) / (2 * eps)
    np.testing.assert_allclose(grads["diffusivity"], fd, rtol=1e-5)
    d = jr.normal(getkey(), (12, 12))
    fd_u = (f({**params, "u0": params["u0"] + eps * d}) - f({**params, "u0": params["u0"] - eps * d})) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grads["u0"], d), fd_u, rtol=1e-5)


def test_fisher_kpp_against_scipy(getkey):
    n = 63
    prob = P.FisherKPP(n, dims=1, diffusivity=2e-3, rate=5.0, t_final=1.0, num_saves=2, dt=0.005)
    params = prob.sample_parameters(getkey())
    out = jax.jit(prob.solve)(params)[0]
    h = 1.0 / (n + 1)
    A = (np.diag(-2 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)) / h**2

    def rhs(t, u):
        return 2e-3 * A @ u + 5.0 * u * (1 - u)

    sol = scipy.integrate.solve_ivp(
        rhs, (0.0, 1.0), np.asarray(params["u0"]), method="Radau", jac=lambda t, u: 2e-3 * A + np.diag(5.0 * (1 - 2 * u)),
        t_eval=np.asarray(prob.save_times), rtol=1e-10, atol=1e-12,
    )
    np.testing.assert_allclose(out, sol.y.T, atol=2e-4)
    assert float(out.max()) <= 1.0 + 1e-6 and float(out.min()) >= -1e-6
    assert float(jnp.sum(out[-1])) > float(jnp.sum(params["u0"]))  # the tumour grows


@pytest.mark.slow
def test_problem_configs_and_float32(getkey):
    problems = [
        P.Heat(8, num_saves=1), P.FisherKPP(8, num_saves=1, diffusivity_range=(1e-3, 1e-2), rate_range=(1.0, 5.0)),
        P.Advection(16, speed_range=(0.5, 2.0)), P.Burgers(16), P.NavierStokes2D(16),
        P.KuramotoSivashinsky(16),
    ]
    names = {p.name for p in problems}
    assert names == {"heat", "fisher_kpp", "advection", "burgers", "navier_stokes", "kuramoto_sivashinsky"}
    for p in problems:
        json.dumps(p.config())
        params = p.sample_parameters(getkey())
        assert p.inputs(params).shape == (1, *p.grid_shape)
    fk = problems[1]
    assert fk.scalar_parameters(fk.sample_parameters(getkey())).shape == (2,)
    # float32 smoke test: a float32 initial condition gives a float32 solution.
    prob = P.Burgers(32, t_final=0.05, num_saves=1)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), prob.sample_parameters(getkey()))
    out32 = jax.jit(prob.solve)(params)
    out64 = jax.jit(prob.solve)(jax.tree.map(lambda a: a.astype(jnp.float64), params))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, out64, atol=1e-5)
    assert eqx.is_array(out32)
    # float32 through CG inside Crank-Nicolson (the default tolerance follows the dtype)
    heat = P.Heat(8, t_final=0.1, num_saves=1, dt=0.05)
    hp = heat.sample_parameters(getkey())
    h32 = jax.jit(heat.solve)(jax.tree.map(lambda a: a.astype(jnp.float32), hp))
    assert h32.dtype == jnp.float32
    np.testing.assert_allclose(h32, jax.jit(heat.solve)(hp), atol=1e-5)


def test_etdrk4_stability_limit_table():
    from jaxnum.pde._etd import etdrk4_imaginary_limit

    x, y = etdrk4_imaginary_limit()
    # Undamped: RK4's imaginary-axis limit 2 sqrt(2); strongly damped: ~ x / sqrt(2).
    assert abs(y[0] - 2 * np.sqrt(2)) < 0.01
    assert abs(y[-1] / x[-1] - 1 / np.sqrt(2)) < 0.01
    assert np.all(np.diff(y) >= -2e-3 * y[1:])  # non-decreasing up to the y-grid step
    # Just inside the limit the amplification factor is <= 1, just outside > 1.
    i = np.searchsorted(x, 5.0)
    E, E2, Q, f1, f2, f3 = (np.asarray(c)[0] for c in P.etdrk4_coefficients(jnp.asarray([-x[i]]), 1.0))

    def amp(yv):
        mu = 1j * yv
        a = E2 + Q * mu
        b = E2 + Q * mu * a
        c = E2 * a + Q * (2 * mu * b - mu)
        return abs(E + f1 * mu + 2 * f2 * mu * (a + b) + f3 * mu * c)

    assert amp(0.99 * y[i]) <= 1 + 1e-12
    assert amp(1.05 * y[i]) > 1
