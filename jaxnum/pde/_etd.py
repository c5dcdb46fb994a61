"""Diffrax solvers for semilinear problems `u' = L u + N(t, u)`, and what the
time-dependent problems share (the step grid, the stability checks of explicit steps,
the call into `diffrax.diffeqsolve`).

Exponential time differencing (`ETDRK4`) for a diagonal `L`, and a linearly implicit
Crank-Nicolson/Heun step (`CrankNicolsonHeun`) whose linear systems are solved by
`jaxnum.linalg`.

`L` is diagonal (a pseudo-spectral discretisation in Fourier space: diffusion
`-nu |k|^2`, advection `-i c k`, the Kuramoto-Sivashinsky `k^2 - k^4`) and stiff;
`N` is the nonlinear, non-stiff rest. ETDRK4 (Cox and Matthews 2002, "Exponential
time differencing for stiff systems") integrates the linear part exactly and the
nonlinear part to fourth order, so the step is limited by accuracy and by the
non-stiff part only.
"""

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from diffrax._term import WrapTerm
from jax import lax
from jaxtyping import Array, Float, Inexact

from ..linalg import CG, StencilOperator
from ._problem import AbstractTimeDependentProblem


class SemilinearTerm(diffrax.AbstractTerm):
    """The vector field `L y + N(t, y, args)` of a semilinear ODE, with the linear
    part kept separate so that solvers can treat it exactly or implicitly.

    **Arguments:**

    - `linear`: `L`, either an array (a diagonal operator acting elementwise, e.g. a
        Fourier symbol in the `rfftn` layout) or a `lineax` operator acting on arrays
        shaped like `y` (e.g. a `jaxnum.linalg.StencilOperator`).
    - `nonlinear`: `N(t, y, args) -> array shaped like y`.

    It is a `diffrax.AbstractTerm` with time as control, so any explicit diffrax
    solver (`Tsit5`, `Heun`...) integrates it as well as `ETDRK4` and
    `CrankNicolsonHeun` do.
    """

    linear: Inexact[Array, "..."] | lx.AbstractLinearOperator
    nonlinear: Callable[[Any, Array, Any], Array]

    def apply_linear(self, y: Array) -> Array:
        if isinstance(self.linear, lx.AbstractLinearOperator):
            return self.linear.mv(y)
        return self.linear * y

    def vf(self, t, y, args):
        return self.apply_linear(y) + self.nonlinear(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: (control * v).astype(v.dtype), vf)


def unwrap_semilinear(terms, name: str) -> tuple[SemilinearTerm, Any]:
    """The `SemilinearTerm` inside diffrax's internal wrappers, and the time direction
    (diffrax wraps terms to integrate backwards in time on a forward clock)."""
    direction = 1
    while isinstance(terms, WrapTerm):
        direction = direction * terms.direction
        terms = terms.term
    if not isinstance(terms, SemilinearTerm):
        raise TypeError(
            f"{name} integrates a `jaxnum.pde.SemilinearTerm(linear, nonlinear)`; got "
            f"{type(terms).__name__}. Split the vector field into its linear and "
            "nonlinear parts, or use an explicit diffrax solver with an `ODETerm`."
        )
    return terms, direction


def _phi_direct(z):
    """The ETDRK4 functions of `z = h L` by their closed forms (accurate for |z| >= 2)."""
    ez, ez2 = jnp.exp(z), jnp.exp(z / 2)
    z3 = z**3
    q = (ez2 - 1) / z
    f1 = (-4 - z + ez * (4 - 3 * z + z**2)) / z3
    f2 = (2 + z + ez * (z - 2)) / z3
    f3 = (-4 - 3 * z - z**2 + ez * (4 - z)) / z3
    return q, f1, f2, f3


def etdrk4_coefficients(
    linear: Inexact[Array, "..."], h, *, num_points: int = 32, radius: float = 3.0
) -> tuple[Array, ...]:
    """The ETDRK4 weights `(E, E2, Q, f1, f2, f3)` for the diagonal operator `linear`
    and step `h` (Kassam and Trefethen 2005, "Fourth-order time-stepping for stiff
    PDEs").

    The phi-functions cancel catastrophically near `hL = 0`. Where `|hL| < 2` they are
    averaged over a circle of `num_points` points of radius `radius` around `hL`
    (Cauchy's mean-value formula, summed by the trapezoid rule, which converges
    super-geometrically for these entire functions); elsewhere the closed forms are
    used. Deviation from Kassam-Trefethen: they put the circle of radius 1 around
    every mode; a radius-3 circle around only the small ones keeps every node at
    least 1 away from the origin, also for complex `L`, where a radius-1 circle can
    pass through 0. Differentiable in `linear` and `h`.
    """
    linear = jnp.asarray(linear)
    is_real = not jnp.iscomplexobj(linear)
    z = h * linear
    small = jnp.abs(z) < 2.0
    z_big = jnp.where(small, 2.0, z)
    z_small = jnp.where(small, z, 0.0)
    theta = 2 * np.pi * (np.arange(num_points) + 0.5) / num_points
    circle = radius * np.exp(1j * theta)
    zc = z_small[..., None] + circle
    contour = [jnp.mean(f, axis=-1) for f in _phi_direct(zc)]
    if is_real:
        contour = [jnp.real(f) for f in contour]
    direct = _phi_direct(z_big)
    q, f1, f2, f3 = (h * jnp.where(small, c, d) for c, d in zip(contour, direct))
    return jnp.exp(z), jnp.exp(z / 2), q, f1, f2, f3


class ETDRK4(diffrax.AbstractSolver):
    """Fourth-order exponential Runge-Kutta (ETDRK4, Cox and Matthews 2002) for
    `u' = L u + N(t, u)` with diagonal `L`, given as a `SemilinearTerm`.

    With `v = y_n`, `N_v = N(t_n, v)` and the weights of `etdrk4_coefficients`:

    $$a = E_2 v + Q N_v,\\quad b = E_2 v + Q N_a,\\quad c = E_2 a + Q (2 N_b - N_v),$$
    $$y_{n+1} = E v + f_1 N_v + 2 f_2 (N_a + N_b) + f_3 N_c.$$

    The linear part is exact, so the step is not limited by the stiffness of `L`
    (diffusion, hyper-diffusion); it is limited by accuracy and by the stability of
    the explicit treatment of `N` (an advective CFL number of order one).

    **Arguments:**

    - `num_points`, `radius`: the contour of `etdrk4_coefficients`.

    The weights are computed once in `init` for the first step size and reused while
    the step stays the same (use `diffrax.ConstantStepSize` or a uniform
    `diffrax.StepTo`); a step of another size (a clipped last step) recomputes them.
    Dense output is linear between steps: put the save times on the step grid.

    **Derivatives:** by diffrax's adjoint (`RecursiveCheckpointAdjoint` by default:
    reverse-mode through the steps, with checkpointing); the weights are
    differentiable in `L`, so gradients with respect to e.g. a viscosity are exact.

    Compare `exponax`'s `ETDRK4` steppers (the same scheme, stepped by `lax.scan`)
    and Kassam-Trefethen's `kursiv.m`.
    """

    num_points: int = eqx.field(default=32, static=True)
    radius: float = eqx.field(default=3.0, static=True)

    term_structure: ClassVar = SemilinearTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def order(self, terms):
        return 4

    def _coefficients(self, terms, h):
        terms, _ = unwrap_semilinear(terms, "ETDRK4")
        if isinstance(terms.linear, lx.AbstractLinearOperator):
            raise TypeError(
                "ETDRK4 needs a diagonal linear part: give `SemilinearTerm(linear=...)` "
                "as an array (e.g. a Fourier symbol). For a stencil operator use "
                "`CrankNicolsonHeun`."
            )
        return etdrk4_coefficients(terms.linear, h, num_points=self.num_points, radius=self.radius)

    def init(self, terms, t0, t1, y0, args):
        h = jnp.asarray(t1 - t0)
        return h, self._coefficients(terms, h)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        h0, coeffs = solver_state
        h = t1 - t0
        same = jnp.abs(h - h0) <= 1e-9 * jnp.abs(h0)
        coeffs = lax.cond(same, lambda: coeffs, lambda: self._coefficients(terms, h))
        E, E2, Q, f1, f2, f3 = coeffs
        term, direction = unwrap_semilinear(terms, "ETDRK4")

        def N(t, y, args):
            return term.nonlinear(t * direction, y, args)

        th = t0 + h / 2
        Nv = N(t0, y0, args)
        a = E2 * y0 + Q * Nv
        Na = N(th, a, args)
        b = E2 * y0 + Q * Na
        Nb = N(th, b, args)
        c = E2 * a + Q * (2 * Nb - Nv)
        Nc = N(t1, c, args)
        y1 = E * y0 + f1 * Nv + 2 * f2 * (Na + Nb) + f3 * Nc
        y1 = y1.astype(y0.dtype)
        return y1, None, {"y0": y0, "y1": y1}, solver_state, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class CrankNicolsonHeun(diffrax.AbstractSolver):
    """Second-order linearly implicit step for `u' = L u + N(t, u)`: Crank-Nicolson on
    the stiff linear part, Heun (explicit trapezoid) on the nonlinear part.

    $$(I - \\tfrac h2 L)\\,u^* = (I + \\tfrac h2 L)\\,u_n + h\\,N(t_n, u_n),$$
    $$(I - \\tfrac h2 L)\\,u_{n+1} = (I + \\tfrac h2 L)\\,u_n + \\tfrac h2\\,(N(t_n, u_n) + N(t_{n+1}, u^*)).$$

    This is the scheme of the FNO paper's Navier-Stokes data (there with a spectral
    `L`, where the solve is a division). Here `L` may be any `lineax` operator (a
    `jaxnum.linalg.StencilOperator` from `diffusion_operator`, say): both systems
    are solved by `linear_solver` (default `jaxnum.linalg.CG`), the first
    warm-started from `u_n`, the second from `u^*`. A recycling solver
    (`jaxnum.linalg.DeflatedCG`) carries its deflation space from step to step in
    the solver state. A diagonal `L` (an array) is solved by division.

    **Arguments:**

    - `linear_solver`: a lineax solver for `I - (h/2) L` (default: `CG` with
        `rtol = max(1e-10, 50 eps)` of the state's dtype, so float32 converges too).
        CG and DeflatedCG need
        `L` tagged negative semidefinite (diffusion), which makes the system SPD.

    **Derivatives:** diffrax's adjoint through the steps; each linear solve is
    differentiated implicitly by lineax (one more solve with the same operator).
    A failed linear solve makes the diffrax solve fail with its result.
    """

    linear_solver: lx.AbstractLinearSolver | None = None

    term_structure: ClassVar = SemilinearTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def order(self, terms):
        return 2

    def _system(self, L, h):
        if isinstance(L, StencilOperator):
            # One fused stencil for I - (h/2) L instead of a sum of operators.
            w = (-(h / 2) * L.weights).at[0].add(1.0)
            tags = lx.positive_semidefinite_tag if lx.is_negative_semidefinite(L) else ()
            return StencilOperator(w, L.periodic, tags)
        struct = L.in_structure()
        tags = [lx.positive_semidefinite_tag] if lx.is_negative_semidefinite(L) else []
        if lx.is_symmetric(L) or tags:
            tags.append(lx.symmetric_tag)
        return lx.TaggedLinearOperator(lx.IdentityLinearOperator(struct) - (h / 2) * L, tags)

    def init(self, terms, t0, t1, y0, args):
        term, _ = unwrap_semilinear(terms, "CrankNicolsonHeun")
        solver = self._linear_solver(y0)
        if isinstance(term.linear, lx.AbstractLinearOperator) and hasattr(solver, "empty_recycle"):
            return solver.empty_recycle(self._system(term.linear, t1 - t0))
        return None

    def _linear_solver(self, y) -> lx.AbstractLinearSolver:
        if self.linear_solver is not None:
            return self.linear_solver
        rtol = max(1e-10, 50 * float(jnp.finfo(jnp.result_type(y)).eps))
        return CG(rtol=rtol, atol=1e-4 * rtol)

    def _solve(self, M, b, guess, space):
        if not isinstance(M, lx.AbstractLinearOperator):
            return b / M, diffrax.RESULTS.successful, space
        options = {"y0": jax.lax.stop_gradient(guess)}  # a warm start changes no solution
        if space is not None:
            options["recycle"] = space
        sol = lx.linear_solve(M, b, self._linear_solver(b), options=options, throw=False)
        if space is not None:
            space = sol.stats["recycle"]
        return sol.value, diffrax.RESULTS.promote(sol.result), space

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        term, direction = unwrap_semilinear(terms, "CrankNicolsonHeun")
        h = t1 - t0
        L = term.linear
        if isinstance(L, lx.AbstractLinearOperator):
            M = self._system(L, h)
            explicit = y0 + (h / 2) * L.mv(y0)
        else:
            M = 1 - (h / 2) * L
            explicit = y0 + (h / 2) * L * y0
        N0 = term.nonlinear(t0 * direction, y0, args)
        y_star, r1, space = self._solve(M, explicit + h * N0, y0, solver_state)
        N1 = term.nonlinear(t1 * direction, y_star, args)
        y1, r2, space = self._solve(M, explicit + (h / 2) * (N0 + N1), y_star, space)
        result = diffrax.RESULTS.where(r1 == diffrax.RESULTS.successful, r2, r1)
        y1 = y1.astype(y0.dtype)
        return y1, None, {"y0": y0, "y1": y1}, space, result

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


# Stability boundaries of explicit Runge-Kutta methods on the negative real axis
# (diffusion) and on the imaginary axis (advection), from their stability
# polynomials. A method not listed gets the conservative (2, 0) of forward Euler's
# real-axis limit and refuses pure advection.
_EXPLICIT_LIMITS = {
    "Euler": (2.0, 0.0),
    "Heun": (2.0, 0.0),
    "Midpoint": (2.0, 0.0),
    "Ralston": (2.0, 0.0),
    "Bosh3": (2.51, 1.73),
    "Tsit5": (3.5, 3.4),
    "Dopri5": (3.3, 3.3),
    "Dopri8": (6.0, 6.0),
}


def is_explicit(solver: diffrax.AbstractSolver) -> bool:
    """Whether `solver` treats the linear part explicitly (so a stiffness limit applies)."""
    return not isinstance(
        solver, (ETDRK4, CrankNicolsonHeun, diffrax.AbstractImplicitSolver)
    )


def check_linear_step(solver, dt: float, rate: float, what: str) -> None:
    """Trace-time check that an explicit `solver` is stable on a linear part whose
    largest decay rate is `rate` (`max |L|`)."""
    if not is_explicit(solver):
        return
    limit, _ = _EXPLICIT_LIMITS.get(type(solver).__name__, (2.0, 0.0))
    if dt * rate > limit:
        raise ValueError(
            f"The explicit step dt = {dt:.3g} with {type(solver).__name__} is unstable for "
            f"{what}: dt * max|L| = {dt * rate:.3g} exceeds the stability limit {limit}. "
            f"Use dt <= {limit / rate:.3g}, or the default solver (`ETDRK4` for spectral "
            "problems, `CrankNicolsonHeun` for finite differences), which treats the "
            "stiff linear part exactly or implicitly."
        )


@functools.cache
def etdrk4_imaginary_limit() -> tuple[np.ndarray, np.ndarray]:
    """The stability limit of ETDRK4 for advection on a damped mode: for the test
    equation `u' = -d u + i w u` with `h d = x` treated exactly and `i w u` as the
    nonlinear part, the largest `y` with `|R(x, i y')| <= 1` for all `|y'| <= y`, `h w = y`.

    Computed once (NumPy, from the scheme's amplification factor) on a grid of `x`
    from 0 to 1e4: 2.85 at `x = 0` (RK4's `2 sqrt 2`), about 3.8 at `x = 2.8`, then
    growing like `0.707 x`. Returns `(x, y_max)`.
    """
    x = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 121)])
    z = -x.astype(complex)
    theta = 2 * np.pi * (np.arange(64) + 0.5) / 64
    zc = z[:, None] + 3.0 * np.exp(1j * theta)[None, :]
    small = np.abs(z) < 2

    def phis(w):
        ew, ew2 = np.exp(w), np.exp(w / 2)
        return ((ew2 - 1) / w, (-4 - w + ew * (4 - 3 * w + w**2)) / w**3,
                (2 + w + ew * (w - 2)) / w**3, (-4 - 3 * w - w**2 + ew * (4 - w)) / w**3)

    with np.errstate(all="ignore"):
        direct = phis(np.where(small, 2.0, z))
        contour = [f.mean(axis=1) for f in phis(zc)]
    Q, f1, f2, f3 = (np.where(small, c, d).real for c, d in zip(contour, direct))
    E, E2 = np.exp(z).real, np.exp(z / 2).real
    ys = np.linspace(0.0, 1.0, 2001)[1:, None] * (3.0 + 0.75 * x)[None, :]
    mu = 1j * ys
    a = E2 + Q * mu
    b = E2 + Q * mu * a
    c = E2 * a + Q * (2 * mu * b - mu)
    R = np.abs(E + f1 * mu + 2 * f2 * mu * (a + b) + f3 * mu * c)
    unstable = R > 1 + 1e-12
    first = np.where(unstable.any(axis=0), unstable.argmax(axis=0), ys.shape[0] - 1)
    ymax = ys[np.maximum(first - 1, 0), np.arange(x.size)]
    return x, ymax


def _etd_limit(x):
    """`etdrk4_imaginary_limit` at damping `x` (linear beyond the table's end)."""
    xs, ys = etdrk4_imaginary_limit()
    slope = ys[-1] / xs[-1]
    return jnp.where(x > xs[-1], slope * x, jnp.interp(x, jnp.asarray(xs), jnp.asarray(ys)))


def check_advective_step(
    solver, dt: float, speed: Array, kabs: np.ndarray, decay, what: str, carrier: Array
) -> Array:
    """Run-time CFL check of the explicitly treated advection, before any step.

    Mode by mode, the advective rate `speed |k|` (the largest imaginary part of the
    linearised nonlinear term) must satisfy `dt speed |k| <= 0.9 y_max(dt decay_k)`,
    where `decay_k = |Re L_k|` is the damping that ETDRK4 applies exactly and
    `y_max` its stability limit on that mode (`etdrk4_imaginary_limit`: 2.85
    undamped, growing like `0.7 dt decay_k` for strongly damped modes). For an
    explicit solver the damping does not help: the limit is its imaginary-axis
    limit. `kabs` holds `|k|` on the modes the nonlinearity reaches (zero elsewhere).

    Returns `carrier` (the initial state: pass it on) with an error attached when
    the check fails. It checks the initial state: a flow that speeds up later is
    not covered.
    """
    kabs = jnp.asarray(kabs)
    if isinstance(solver, ETDRK4):
        limit = 0.9 * _etd_limit(dt * jnp.abs(decay) * jnp.ones_like(kabs))
        name = "0.9 x ETDRK4's limit on each damped mode"
    elif is_explicit(solver):
        limit = _EXPLICIT_LIMITS.get(type(solver).__name__, (2.0, 0.0))[1]
        name = f"{limit}"
    else:
        return carrier
    ratio = jnp.max(dt * speed * kabs / limit)
    return eqx.error_if(
        carrier,
        ratio > 1,
        f"CFL violated for {what}: dt * max|u| * |k| exceeds {name} for some mode, with "
        f"{type(solver).__name__} and dt = {dt:.3g}. Give a smaller `dt`.",
    )


def stable_step(speed: float, kabs: np.ndarray, decay: np.ndarray, margin: float = 0.4) -> float:
    """The largest step (to 2%) with `dt speed |k| <= margin * y_max(dt decay_k)` on every
    mode (the ETDRK4 criterion of `check_advective_step` with a margin), for choosing
    default steps."""
    xs, ys = etdrk4_imaginary_limit()
    kabs, decay = np.asarray(kabs, float), np.abs(np.asarray(decay, float))

    def ok(dt):
        x = dt * decay
        lim = np.where(x > xs[-1], ys[-1] / xs[-1] * x, np.interp(x, xs, ys))
        return bool(np.all(dt * speed * kabs <= margin * lim))

    dt = 10.0
    while dt > 1e-12 and not ok(dt):
        dt /= 1.02
    return dt


def step_grid(t_final: float, num_saves: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """The save times `t_final * (1..num_saves) / num_saves` and a uniform step grid
    (a whole number of steps per save interval, none longer than `dt`), so that every
    save time is a step end."""
    if not (t_final > 0 and num_saves >= 1 and dt > 0):
        raise ValueError(
            f"Need t_final > 0, num_saves >= 1 and dt > 0; got {t_final}, {num_saves}, {dt}."
        )
    interval = t_final / num_saves
    per = max(1, math.ceil(interval / dt * (1 - 1e-12)))
    steps = np.linspace(0.0, t_final, num_saves * per + 1)
    saves = steps[per::per]
    return saves, steps


def integrate(
    term: SemilinearTerm,
    solver: diffrax.AbstractSolver,
    y0: Array,
    steps: np.ndarray,
    saves: np.ndarray,
    args: Any = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
) -> Float[Array, "T ..."]:
    """`diffeqsolve` on the step grid, returning the states at `saves`."""
    dtype = jnp.finfo(y0.dtype).dtype
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    with warnings.catch_warnings():
        # Spectral problems step complex Fourier coefficients. The solvers here use no
        # error norm and no adaptive step, the cases diffrax's warning is about.
        warnings.filterwarnings("ignore", message="Complex dtype support")
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0=float(steps[0]),
            t1=float(steps[-1]),
            dt0=None,
            y0=y0,
            args=args,
            saveat=diffrax.SaveAt(ts=jnp.asarray(saves, dtype)),
            stepsize_controller=diffrax.StepTo(ts=jnp.asarray(steps, dtype)),
            max_steps=len(steps) - 1,
            adjoint=adjoint,
        )
    return sol.ys


class AbstractSteppedProblem(AbstractTimeDependentProblem):
    """A time-dependent problem advanced by fixed steps of `step` up to `t_final`,
    saving `num_saves` states on the step grid of `step_grid`. Subclasses hold
    `t_final` and `num_saves` and define `step`."""

    @property
    def save_times(self) -> Float[Array, " T"]:
        return jnp.asarray(step_grid(self.t_final, self.num_saves, self.step)[0])
