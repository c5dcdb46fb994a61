"""Time stepping: jaxnum's diffrax ETDRK4 against peers, at equal accuracy.

- Burgers 1D (FNO set-up, nu = 0.1, t = 1) and Kuramoto-Sivashinsky (L = 32 pi)
  against `exponax` (a JAX ETDRK stepper, order 4, same dealiasing and contour).
- 2D Navier-Stokes vorticity (FNO forcing, nu = 1e-3) against a plain
  pseudo-spectral Crank-Nicolson/Heun solver written below (the FNO paper's scheme).

Each solver runs a batch of random initial data (`jax.vmap`) at a ladder of steps;
its error is the relative L2 distance to its own fine reference (the same solver at a
far smaller step), i.e. the time-stepping error of its semi-discretisation; the table
also gives the distance between the two fine references (the difference of the two
spatial discretisations: exponax's 2/3 rule keeps one mode fewer than jaxnum's, which
shows on Kuramoto-Sivashinsky). The CN/Heun peer shares jaxnum's semi-discretisation,
so its errors are against jaxnum's fine reference. For an accuracy target,
each solver is timed at the largest step that meets it; the throughput ratio is
peer CPU time / jaxnum CPU time (>= 1: jaxnum is no slower).

Threads are pinned alike for both sides by `benchmarks/_pin.py` (one thread, one core;
`taskset -c N` picks the core):

    python benchmarks/time_stepping.py [--quick] [--json]
"""

import argparse
import json
import time

import _pin  # noqa: F401  (pins threads and the core before numpy/jax/torch)

# isort: split

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

jax.config.update("jax_enable_x64", True)

import exponax

import jaxnum.pde as P


def cpu_time(fn, *args, repeats=3):
    """Median CPU seconds of `fn(*args)` (compiled beforehand) and its output."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        out = jax.block_until_ready(fn(*args))
        times.append(time.process_time() - t0)
    return float(np.median(times)), out


def rel_err(a, ref):
    a, ref = np.asarray(a), np.asarray(ref)
    return float(np.max(np.linalg.norm((a - ref).reshape(len(a), -1), axis=1)
                        / np.linalg.norm(ref.reshape(len(ref), -1), axis=1)))


# --- Burgers and KS: jaxnum vs exponax -----------------------------------------------------


def jaxnum_1d(problem_cls, kwargs, dt, u0):
    prob = problem_cls(**kwargs, num_saves=1, dt=dt)
    solve = jax.jit(jax.vmap(lambda u: prob.solve({"u0": u, **extra(prob, u)})[0, -1]))
    return solve


def extra(prob, u):
    if isinstance(prob, P.Burgers):
        return {"viscosity": jnp.asarray(prob.viscosity, u.dtype)}
    return {}


def exponax_1d(make_stepper, dt, t_final):
    stepper = make_stepper(dt)
    n_steps = round(t_final / dt)
    run = exponax.repeat(stepper, n_steps)
    return jax.jit(jax.vmap(lambda u: run(u[None])[0]))


def compare_1d(name, problem_cls, kwargs, make_stepper, dts, ref_dt, batch, target, key):
    prob = problem_cls(**kwargs)
    u0 = jax.vmap(prob.sample_parameters)(jr.split(key, batch))["u0"]
    t_final = kwargs["t_final"]
    ref = jaxnum_1d(problem_cls, kwargs, ref_dt, u0)(u0)
    ref_peer = exponax_1d(make_stepper, ref_dt, t_final)(u0)
    rows = []
    for dt in dts:
        tj, errj = timed_or_refused(jaxnum_1d(problem_cls, kwargs, dt, u0), u0, ref)
        te, oute = cpu_time(exponax_1d(make_stepper, dt, t_final), u0)
        rows.append({"dt": dt, "jaxnum_s": tj, "jaxnum_err": errj,
                     "exponax_s": te, "exponax_err": rel_err(oute, ref_peer)})
    return summarise(name, rows, target, "exponax", batch, rel_err(ref_peer, ref))


def timed_or_refused(fn, x, ref, repeats=3):
    """CPU time and error of a jaxnum solve, or (None, None) when its CFL check
    refuses the step (jaxnum errors out before stepping; the peers just run)."""
    try:
        t, out = cpu_time(fn, x, repeats=repeats)
    except Exception as e:
        if "CFL" not in str(e):
            raise
        return None, None
    return t, rel_err(out, ref)


def summarise(name, rows, target, peer, batch, ref_agreement):
    ok_j = [r for r in rows if r["jaxnum_err"] is not None and r["jaxnum_err"] <= target]
    ok_p = [r for r in rows if r[f"{peer}_err"] is not None and r[f"{peer}_err"] <= target]
    best_j = min(ok_j, key=lambda r: r["jaxnum_s"]) if ok_j else None
    best_p = min(ok_p, key=lambda r: r[f"{peer}_s"]) if ok_p else None
    ratio = best_p[f"{peer}_s"] / best_j["jaxnum_s"] if best_j and best_p else None
    return {"problem": name, "peer": peer, "batch": batch, "target": target,
            "reference_agreement": ref_agreement, "rows": rows,
            "jaxnum_best": best_j, "peer_best": best_p, "ratio": ratio}


# --- Navier-Stokes: jaxnum ETDRK4 vs a plain Crank-Nicolson/Heun solver -------------------


def plain_cn_heun(n, nu, dt, t_final):
    """The FNO paper's vorticity solver, written plainly: Crank-Nicolson on the viscous
    term, Heun on advection and forcing, 2/3 dealiasing, stepped by `lax.fori_loop`."""
    kx = np.fft.fftfreq(n, 1.0 / n)[:, None] * 2 * np.pi
    ky = np.fft.rfftfreq(n, 1.0 / n)[None, :] * 2 * np.pi
    lap = -(kx**2 + ky**2)
    inv = np.where(lap < 0, -1.0 / np.where(lap < 0, lap, 1.0), 0.0)  # 1/|k|^2
    ikx = 1j * np.where(np.abs(kx) == n // 2 * 2 * np.pi, 0.0, kx)
    iky = 1j * np.where(np.abs(ky) == n // 2 * 2 * np.pi, 0.0, ky)
    mask = ((np.abs(kx) < 2 * np.pi * n / 3) & (np.abs(ky) < 2 * np.pi * n / 3)).astype(float)
    f_hat = jnp.fft.rfft2(jnp.asarray(P.fno_forcing(n)))
    steps = round(t_final / dt)

    def nonlinear(w_hat):
        w_hat = w_hat * mask
        psi = w_hat * inv
        u = jnp.fft.irfft2(iky * psi, s=(n, n))
        v = jnp.fft.irfft2(-ikx * psi, s=(n, n))
        wx = jnp.fft.irfft2(ikx * w_hat, s=(n, n))
        wy = jnp.fft.irfft2(iky * w_hat, s=(n, n))
        return f_hat - mask * jnp.fft.rfft2(u * wx + v * wy)

    def step(_, w_hat):
        n0 = nonlinear(w_hat)
        explicit = w_hat * (1 + 0.5 * dt * nu * lap)
        implicit = 1 - 0.5 * dt * nu * lap
        w_star = (explicit + dt * n0) / implicit
        return (explicit + 0.5 * dt * (n0 + nonlinear(w_star))) / implicit

    def solve(w0):
        return jnp.fft.irfft2(jax.lax.fori_loop(0, steps, step, jnp.fft.rfft2(w0)), s=(n, n))

    return jax.jit(jax.vmap(solve))


def compare_ns(n, nu, t_final, dts_j, dts_p, ref_dt, batch, target, key, spinup=0.0):
    kw = {"resolution": n, "viscosity": nu, "t_final": t_final, "num_saves": 1}
    prob = P.NavierStokes2D(**kw)
    w0 = jax.vmap(prob.sample_parameters)(jr.split(key, batch))["w0"]
    if spinup:
        # Start from a developed flow: the forcing has had `spinup` time units to act.
        warm = P.NavierStokes2D(n, viscosity=nu, t_final=spinup, num_saves=1, dt=1 / 64)
        w0 = jax.jit(jax.vmap(lambda w: warm.solve({"w0": w, "viscosity": jnp.asarray(nu)})[0, -1]))(w0)

    def ours(dt):
        p = P.NavierStokes2D(**kw, dt=dt)
        return jax.jit(jax.vmap(lambda w: p.solve({"w0": w, "viscosity": jnp.asarray(nu)})[0, -1]))

    ref = ours(ref_dt)(w0)
    ref_peer = plain_cn_heun(n, nu, ref_dt / 8, t_final)(w0)
    rows = []
    for dt in dts_j:
        t, err = timed_or_refused(ours(dt), w0, ref, repeats=1)
        rows.append({"dt": dt, "jaxnum_s": t, "jaxnum_err": err,
                     "cn_heun_s": None, "cn_heun_err": None})
    for dt in dts_p:
        t, out = cpu_time(plain_cn_heun(n, nu, dt, t_final), w0, repeats=1)
        rows.append({"dt": dt, "jaxnum_s": None, "jaxnum_err": None,
                     "cn_heun_s": t, "cn_heun_err": rel_err(out, ref)})
    speed = float(jnp.max(jax.vmap(lambda w: jnp.abs(P.velocity_from_vorticity(w)).max())(w0)))
    return summarise(f"navier_stokes {n}^2 nu={nu} t={t_final} (after spin-up {spinup}, "
                     f"max|u0| = {speed:.2f})", rows, target, "cn_heun",
                     batch, rel_err(ref_peer, ref))


def markdown(result):
    peer = result["peer"]
    lines = [(f"### {result['problem']} (batch {result['batch']}, target rel. error "
             f"{result['target']:.0e}; fine references agree to {result['reference_agreement']:.1e})"),
             "", f"| dt | jaxnum CPU s | jaxnum error | {peer} CPU s | {peer} error |",
             "|---|---|---|---|---|"]

    def fmt(v, f):
        return "-" if v is None else format(v, f)

    for r in result["rows"]:
        if r["jaxnum_s"] is None and (peer == "exponax" or r[peer + "_s"] is None):
            ours = "refused (CFL) | -"
        else:
            ours = f"{fmt(r['jaxnum_s'], '.3f')} | {fmt(r['jaxnum_err'], '.1e')}"
        lines.append(f"| {r['dt']:.3g} | {ours} | {fmt(r[peer + '_s'], '.3f')} | "
                     f"{fmt(r[peer + '_err'], '.1e')} |")
    ratio = result["ratio"]
    lines += ["", f"Throughput ratio at the target ({peer} time / jaxnum time): "
              + ("n/a (a solver missed the target at every step)" if ratio is None else f"**{ratio:.2f}**"), ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=["burgers", "ks", "ns"], default=None)
    parser.add_argument("--ns-spinup", type=float, default=0.0,
                        help="integrate the NS initial data this long first (a developed flow)")
    args = parser.parse_args()
    key = jr.PRNGKey(0)
    results = []
    q = args.quick
    if args.only in (None, "burgers"):
        n = 256 if q else 1024
        results.append(compare_1d(
            f"burgers n={n} nu=0.1 t=1", P.Burgers,
            {"resolution": n, "viscosity": 0.1, "t_final": 1.0},
            lambda dt: exponax.stepper.Burgers(
                1, 1.0, n, dt, diffusivity=0.1, convection_scale=1.0, conservative=True,
                order=4, num_circle_points=32),
            [4e-3, 2e-3, 1e-3, 5e-4] if not q else [2e-3, 1e-3], 1e-4, 4 if q else 16, 1e-6, key))
    if args.only in (None, "ks"):
        n = 128 if q else 256
        results.append(compare_1d(
            f"kuramoto_sivashinsky n={n} L=32pi t=20", P.KuramotoSivashinsky,
            {"resolution": n, "t_final": 20.0},
            lambda dt: exponax.stepper.KuramotoSivashinskyConservative(
                1, 32 * np.pi, n, dt, order=4, num_circle_points=32),
            [0.05, 0.025, 0.0125], 0.00125, 4 if q else 16, 1e-3, key))
    if args.only in (None, "ns"):
        n = 32 if q else 64
        results.append(compare_ns(
            n, 1e-3, 2.0 if q else 10.0, [1 / 8, 1 / 16, 1 / 32, 1 / 64],
            [1 / 64, 1 / 256, 1 / 1024], 1 / 1024, 2 if q else 4, 1e-6, key, args.ns_spinup))
    for r in results:
        print(markdown(r))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
