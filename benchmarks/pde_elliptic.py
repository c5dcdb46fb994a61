"""Darcy (FNO set-up) solve and adjoint-gradient cost, jaxnum vs scipy SuperLU."""
import json
import sys
import time

import _pin  # noqa: F401  (pins threads and the core before numpy/jax)

# isort: split

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

jax.config.update("jax_enable_x64", True)
from jaxnum import pde


def csr(op):
    b = op.as_bcoo(); i = np.asarray(b.indices)
    return sp.csr_matrix((np.asarray(b.data), (i[:, 0], i[:, 1])), shape=b.shape)

def cpu(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.process_time(); jax.block_until_ready(fn()); ts.append(time.process_time() - t)
    return float(np.median(ts))

rows = []
for n in [int(a) for a in sys.argv[1:]] or [64, 128]:
    for coef in ("threshold", "lognormal"):
        prob = pde.Darcy(n, coefficient=coef)
        keys = jr.split(jr.PRNGKey(0), 5)
        ps = [prob.sample_parameters(k) for k in keys]
        solve = jax.jit(lambda p: prob.solve(p))
        obs = jnp.zeros((n, n))
        vg = jax.jit(jax.value_and_grad(lambda la: 0.5 * jnp.sum((prob.solve({"coefficient": jnp.exp(la)}).value - obs) ** 2)))
        jax.block_until_ready(solve(ps[0]).value); jax.block_until_ready(vg(jnp.log(ps[0]["coefficient"])))
        t_j, t_g, t_s, mv, err = [], [], [], [], []
        for p in ps:
            sol = solve(p); u = np.asarray(sol.value).ravel()
            A = csr(prob.operator(p)).tocsc(); b = np.asarray(prob.rhs(p)).ravel()
            t = time.process_time(); ref = spla.spsolve(A, b); t_s.append(time.process_time() - t)
            err.append(np.linalg.norm(u - ref) / np.linalg.norm(ref))
            t_j.append(cpu(lambda: solve(p).value, 3))
            la = jnp.log(p["coefficient"])
            t_g.append(cpu(lambda: vg(la)[1], 3))
            mv.append(int(sol.stats["num_matvecs"]))
        rows.append(dict(n=n, coefficient=coef, jaxnum_solve_s=np.median(t_j), scipy_splu_s=np.median(t_s),
                         grad_s=np.median(t_g), grad_over_solve=np.median(t_g) / np.median(t_j),
                         matvecs=int(np.median(mv)), max_rel_diff=max(err)))
        print(json.dumps(rows[-1]), flush=True)
