"""Darcy inversion: recycled + warm-started adjoint solves vs plain CG (CPU time, matvecs)."""
import _pin  # noqa: F401  (pins threads and the core before numpy/jax)

# isort: split
import time, sys, jax, jax.numpy as jnp, jax.random as jr
jax.config.update("jax_enable_x64", True)
from jaxnum.pde import Darcy
from jaxnum.inverse import DarcyInversion, invert, sensor_lattice, observe, SmoothnessPrior
from jaxnum.implicit import LBFGS
for n, per, steps in [(32, 10, 60), (64, 20, 60)]:
    p = Darcy(n, coefficient="lognormal", log_sigma=0.5, alpha=3.0, tau=3.0, field_boundary="neumann")
    m_true = jnp.log(p.sample_parameters(jr.PRNGKey(0))["coefficient"])
    sensors = sensor_lattice(p.grid.shape, per)
    u = p.solve({"coefficient": jnp.exp(m_true)}).value
    sigma = 0.01 * float(jnp.max(u))
    obs = observe(u, sensors) + sigma * jr.normal(jr.PRNGKey(1), (sensors.shape[0],))
    inv = DarcyInversion(p, sensors, noise_std=sigma, prior=SmoothnessPrior(1.0, 1e-2, 0.0, p.grid.spacing))
    for rec, ws in [(False, False), (False, True), (True, True)]:
        f = jax.jit(lambda o: invert(inv, o, solver=LBFGS(rtol=1e-8, atol=0.0, max_steps=steps), recycle=rec, warm_start=ws))
        jax.block_until_ready(f(obs))
        ts = []
        for _ in range(3):
            t = time.process_time(); r = jax.block_until_ready(f(obs)); ts.append(time.process_time() - t)
        ts.sort()
        err = float(jnp.linalg.norm(r.value - m_true) / jnp.linalg.norm(m_true))
        mv = int(r.stats["forward_matvecs"]) + int(r.stats["adjoint_matvecs"])
        print(f"| {n}^2 | {sensors.shape[0]} | recycle={rec} warm={ws} | {int(r.num_steps)} | {int(r.num_evaluations)} | {int(r.stats['forward_matvecs'])} | {int(r.stats['adjoint_matvecs'])} | {mv} | {ts[1]:.2f} | {err:.3f} |", flush=True)
