"""Darcy solves with and without the multigrid preconditioner `jaxnum.linalg.multigrid`.

Cases: `jaxnum.pde.Darcy` (FNO set-up: `a` in {12, 3} thresholded from a Gaussian
random field, `f = 1`, zero Dirichlet walls, finite volumes) in 2D at 64^2 and 128^2
and in 3D at 32^3, float64, relative tolerance 1e-8 on the 2-norm residual.

Methods, on the same `--samples` coefficient fields, timed on the solve only
(sampling and assembly excluded):

- `lineax.CG` (two-norm stopping rule), `jit` once, one call per sample;
- `jaxnum CG` and `jaxnum CG + multigrid` (the V-cycle built inside the jitted solve
    from the sample's operator, so its set-up is timed), one call per sample; also
    with the cycle in float32 (`multigrid(op, dtype="float32")`, CG in float64);
- `jaxnum DeflatedCG + multigrid`: `solve_sequence` over all samples in similarity
    order (recycling the deflation space along the sequence), one jitted call;
- scipy `cg` and `spsolve` (SuperLU) on the assembled CSR matrices.

Every method's answers are compared with `spsolve` on the first `--check` samples
before its time counts. Process CPU time, single-threaded on every side.

    python benchmarks/multigrid.py --samples 50 --json
"""


import _pin  # noqa: F401  (pins threads and the core before numpy/jax/torch)

# isort: split

import argparse
import json
import time

import jax
import jax.random as jr
import lineax as lx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from krylov_recycling import (
    rms_norm,  # lineax's test made the 2-norm test of the others
)

import jaxnum.linalg as jl
from jaxnum.pde import Darcy

jax.config.update("jax_enable_x64", True)

CASES = {"2d64": (64, 2), "2d128": (128, 2), "3d32": (32, 3)}
RTOL = 1e-8


def to_csr(op) -> sp.csr_matrix:
    bcoo = op.as_bcoo()
    idx = np.asarray(bcoo.indices)
    n = bcoo.shape[0]
    return sp.csr_matrix((np.asarray(bcoo.data), (idx[:, 0], idx[:, 1])), shape=(n, n))


def run_case(name, samples, check, spsolve_samples):
    res, ndim = CASES[name]
    prob = Darcy(res, ndim)
    params = jax.vmap(prob.sample_parameters)(jr.split(jr.PRNGKey(0), samples))
    per = [jax.tree.map(lambda v, i=i: v[i], params) for i in range(samples)]
    systems = [prob.system(p) for p in per]
    b = np.asarray(systems[0][1]).ravel()
    mats = [to_csr(op) for op, _ in systems]
    n_ref = max(check, spsolve_samples)
    t0 = time.process_time()
    refs = [spla.spsolve(A.tocsc(), b) for A in mats[:n_ref]]
    spsolve_cpu = (time.process_time() - t0) / n_ref
    rows = []

    def record(label, sols, cpu_per, matvecs, count):
        err = max(np.linalg.norm(np.ravel(sols[i]) - refs[i]) / np.linalg.norm(refs[i])
                  for i in range(min(check, count)))
        if err > 1e-5:
            raise AssertionError(f"{name} {label}: error {err:.2e} against spsolve")
        rows.append({"case": name, "method": label, "samples": count,
                     "cpu_ms_per_solve": 1e3 * cpu_per,
                     "matvecs_median": None if matvecs is None else float(np.median(matvecs)),
                     "max_rel_error_vs_spsolve": float(err)})

    def per_sample(label, solve):
        out = solve(per[0])
        jax.block_until_ready(out)
        t = time.process_time()
        outs = [jax.block_until_ready(solve(p)) for p in per]
        cpu = (time.process_time() - t) / samples
        record(label, [o[0] for o in outs], cpu, [int(o[1]) for o in outs], samples)

    lx_cg = lx.CG(rtol=RTOL, atol=0.0, norm=rms_norm, max_steps=20 * b.size)

    @jax.jit
    def lineax_cg(p):
        op, rhs = prob.system(p)
        sol = lx.linear_solve(op, rhs, lx_cg, throw=False)
        return sol.value, sol.stats["num_steps"]

    def jaxnum(precond, **kw):
        @jax.jit
        def solve(p):
            op, rhs = prob.system(p)
            opts = {"preconditioner": jl.multigrid(op, **kw)} if precond else {}
            sol = lx.linear_solve(op, rhs, jl.CG(rtol=RTOL, atol=0.0), options=opts, throw=False)
            return sol.value, sol.stats["num_matvecs"]
        return solve

    per_sample("lineax CG, independent", lineax_cg)
    per_sample("jaxnum CG, independent", jaxnum(False))
    per_sample("jaxnum CG + multigrid, independent", jaxnum(True))
    per_sample("jaxnum CG + multigrid float32 cycle, independent", jaxnum(True, dtype="float32"))

    make = lambda p: prob.system(p)[0]
    rhs = systems[0][1]
    for k in (4, 10):
        solver = jl.DeflatedCG(rtol=RTOL, atol=0.0, recycle=k)

        @jax.jit
        def sequence(params, solver=solver):
            seq = jl.solve_sequence(make, params, rhs, solver, features=prob.features,
                                    preconditioner=jl.multigrid, throw=False)
            return seq.value, seq.stats["num_matvecs"]

        jax.block_until_ready(sequence(params))
        t = time.process_time()
        vals, mv = jax.block_until_ready(sequence(params))
        cpu = (time.process_time() - t) / samples
        record(f"jaxnum DeflatedCG(k={k}) + multigrid, similarity sequence",
               list(vals), cpu, np.asarray(mv), samples)

    iters = []

    def count(_):
        iters[-1] += 1

    t = time.process_time()
    sols = []
    for A in mats:
        iters.append(0)
        sols.append(spla.cg(A, b, rtol=RTOL, atol=0.0, maxiter=20 * b.size, callback=count)[0])
    record("scipy cg", sols, (time.process_time() - t) / samples, iters, samples)
    record("scipy spsolve (SuperLU)", refs, spsolve_cpu, None, n_ref)
    base = next(r for r in rows if r["method"] == "lineax CG, independent")["cpu_ms_per_solve"]
    for r in rows:
        r["throughput_vs_lineax_cg"] = base / r["cpu_ms_per_solve"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--check", type=int, default=3)
    parser.add_argument("--spsolve-samples", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    all_rows = []
    for name in args.cases:
        rows = run_case(name, args.samples, args.check, args.spsolve_samples)
        all_rows += rows
        print(f"\n{name}")
        print("| method | samples | CPU ms / solve | median matvecs | throughput vs lineax.CG | max rel. error vs spsolve |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            mv = "-" if r["matvecs_median"] is None else f"{r['matvecs_median']:.0f}"
            print(f"| {r['method']} | {r['samples']} | {r['cpu_ms_per_solve']:.2f} | {mv} | "
                  f"{r['throughput_vs_lineax_cg']:.2f}x | {r['max_rel_error_vs_spsolve']:.1e} |",
                  flush=True)
    if args.json:
        print(json.dumps(all_rows))


if __name__ == "__main__":
    main()
