"""Batched Krylov solves: `vmap` against one system after the other (`lax.map`).

Issue 2 asks that a long sequence can be split into chunks solved in parallel under
`vmap` (for accelerators), and users `vmap` solves over batches of parameters. This
script times, in one process and on the same systems, each solver two ways:

- `jit(vmap(solve))`: the systems in one batched program;
- `jit(lax.map(solve))`: the same systems one after the other;

for jaxnum `GMRES(40)`, `GCRODR(40, 20)` (no carried space), `CG` and
`DeflatedCG(recycle=20)` (harvesting, no carried space), and their peers
`lineax.GMRES(restart=40)` and `lineax.CG`, then `solve_sequence` with one
chunk against `--chunks` chunks (GCRO-DR carrying its space inside each chunk). It
checks that every row's solutions agree with jaxnum's `lax.map` ones (relative error
of the stacked solutions, `--agree`), prints medians over `--repeats` calls and the
ratios. Systems: the benchmark families of `krylov_recycling.py` ((a): 2D
convection-diffusion, KL-6 log-normal coefficient, `|v| = 11`; (b): 2D Darcy,
log-normal GRF), at `--n`^2 unknowns, rtol 1e-8, float64.

    python benchmarks/krylov_batched.py --n 32 64 --systems 4
    python benchmarks/krylov_batched.py --n 64 --systems 16 --chunks 4 --sequence-only

On CPU a batched program cannot beat the same work done one system at a time, and
it can lose to it: the systems run in lockstep (each waits for the slowest), and the
batch's Krylov bases (4 systems x 41 vectors x 64^2 x 8 bytes = 5.4 MB for GMRES(40)
at 64^2) fall out of a core's 2 MB of L2 where one system's (1.3 MB) fits. The ratio
`vmap / map` measures what batching costs; on an accelerator, where a batch is what
fills the device, it is the cost that matters. The `lockstep` column, `B max_i p_i /
sum_i p_i` over the `B` systems' products `p_i`, is the part of it that no batched
solver avoids: a batch runs as many steps as its slowest system needs.
"""
# ruff: noqa: I001  (_pin must come before jax)

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pin

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

jax.config.update("jax_enable_x64", True)

import krylov_recycling as kr

import jaxnum.linalg as jl


def _stats_matvecs(sol):
    stats = sol.stats
    return stats["num_matvecs"] if "num_matvecs" in stats else stats["num_steps"]


def _timed(fn, arg, repeats):
    out = jax.block_until_ready(fn(arg))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def _solvers(symmetric, max_steps):
    if symmetric:
        return {
            "jaxnum CG": jl.CG(rtol=1e-8, atol=0.0, max_steps=max_steps),
            "lineax CG": lx.CG(rtol=1e-8, atol=0.0, norm=kr.rms_norm, max_steps=max_steps),
            "jaxnum DeflatedCG(20)": jl.DeflatedCG(
                rtol=1e-8, atol=0.0, recycle=20, max_steps=max_steps
            ),
        }
    return {
        "jaxnum GMRES(40)": jl.GMRES(rtol=1e-8, atol=0.0, restart=40, max_steps=max_steps),
        "lineax GMRES(40)": lx.GMRES(rtol=1e-8, atol=0.0, restart=40, norm=kr.rms_norm, max_steps=max_steps),
        "jaxnum GCRODR(40, 20)": jl.GCRODR(
            rtol=1e-8, atol=0.0, restart=40, recycle=20, max_steps=max_steps
        ),
    }


def batched_rows(case, n, systems, repeats, agree):
    params, make, rhs, symmetric, desc = _case(case, n, systems)
    print(f"\n## {desc}, {systems} systems")
    print(f"{'solver':24s} {'vmap ms':>9s} {'map ms':>9s} {'vmap/map':>9s} "
          f"{'products vmap/map':>18s} {'lockstep':>8s} {'max rel. diff':>13s}")
    reference = None
    for label, solver in _solvers(symmetric, 20 * n * n).items():
        tags = lx.positive_semidefinite_tag if symmetric else ()

        def solve(p, solver=solver, tags=tags):
            op = make(p)
            if tags:
                op = lx.TaggedLinearOperator(op, tags)
            sol = lx.linear_solve(op, rhs, solver, throw=False)
            return sol.value, _stats_matvecs(sol), sol.result == lx.RESULTS.successful

        fv = jax.jit(jax.vmap(solve))
        fm = jax.jit(lambda P, solve=solve: jax.lax.map(solve, P))
        (xv, mv, okv), tv = _timed(fv, params, repeats)
        (xm, mm, okm), tm = _timed(fm, params, repeats)
        if reference is None:
            reference = xm
        scale = float(jnp.max(jnp.abs(reference)))
        diff = max(float(jnp.max(jnp.abs(x - reference))) / scale for x in (xv, xm))
        flag = "" if diff <= agree and bool(okv.all() & okm.all()) else "  ** DISAGREE or FAILED **"
        if label.startswith("lineax"):
            label += " *"
        print(f"{label:24s} {1e3 * tv:9.1f} {1e3 * tm:9.1f} {tv / tm:9.2f} "
              f"{f'{int(np.sum(mv))} / {int(np.sum(mm))}':>18s} "
              f"{len(mv) * float(np.max(mv)) / float(np.sum(mv)):8.2f} {diff:13.1e}{flag}",
              flush=True)
    print("lockstep: systems x the most products of one system / all products (under vmap "
          "every system waits for the slowest)")
    if symmetric:
        print("* lineax CG reports `num_steps`, its iterations (about its products).")
    else:
        print("* lineax GMRES reports `num_steps`, its restart cycles, not its products.")


def sequence_rows(case, n, systems, chunks, repeats, agree):
    params, make, rhs, symmetric, desc = _case(case, n, systems)
    solvers = (
        {"jaxnum CG": jl.CG(rtol=1e-8, atol=0.0),
         "jaxnum DeflatedCG(20)": jl.DeflatedCG(rtol=1e-8, atol=0.0, recycle=20)}
        if symmetric else
        {"jaxnum GMRES(40)": jl.GMRES(rtol=1e-8, atol=0.0, restart=40),
         "jaxnum GCRODR(40, 20)": jl.GCRODR(rtol=1e-8, atol=0.0, restart=40, recycle=20)}
    )
    print(f"\n## solve_sequence, {desc}, {systems} systems: 1 chunk against {chunks}")
    print(f"{'solver':24s} {'1 chunk ms':>11s} {f'{chunks} chunks ms':>13s} {'ratio':>7s} "
          f"{'products 1 / chunks':>20s} {'max rel. diff':>13s}")
    for label, solver in solvers.items():
        f1 = jax.jit(lambda P, s=solver: jl.solve_sequence(make, P, rhs, s, num_chunks=1))
        fc = jax.jit(lambda P, s=solver: jl.solve_sequence(make, P, rhs, s, num_chunks=chunks))
        o1, t1 = _timed(f1, params, repeats)
        oc, tc = _timed(fc, params, repeats)
        scale = float(jnp.max(jnp.abs(o1.value)))
        diff = float(jnp.max(jnp.abs(oc.value - o1.value))) / scale
        p1, pc = int(o1.stats["num_matvecs"].sum()), int(oc.stats["num_matvecs"].sum())
        flag = "" if diff <= agree else "  ** DISAGREE **"
        print(f"{label:24s} {1e3 * t1:11.0f} {1e3 * tc:13.0f} {tc / t1:7.2f} "
              f"{f'{p1} / {pc}':>20s} {diff:13.1e}{flag}", flush=True)


def _case(case, n, systems):
    if case == "a":
        return kr.make_case(f"a{n}", systems, 0)
    params = kr.gaussian_random_field(jax.random.PRNGKey(0), systems, (n, n))
    return params, kr.darcy_family, jnp.ones((n, n)), True, f"Darcy 2D {n}^2, log-normal GRF"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--cases", nargs="+", default=["a", "b"], choices=["a", "b"])
    parser.add_argument("--systems", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--sequence-systems", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agree", type=float, default=1e-6,
                        help="largest relative difference of the solutions accepted")
    parser.add_argument("--sequence-only", action="store_true")
    parser.add_argument("--no-sequence", action="store_true")
    args = parser.parse_args()
    print(f"# krylov_batched: {_pin.describe()}; jax {jax.__version__}, lineax {lx.__version__}")
    print(f"# command: python {' '.join(sys.argv)}")
    for n in args.n:
        for case in args.cases:
            if not args.sequence_only:
                batched_rows(case, n, args.systems, args.repeats, args.agree)
            if not args.no_sequence:
                sequence_rows(case, n, args.sequence_systems, args.chunks,
                              max(1, args.repeats // 2), args.agree)


if __name__ == "__main__":
    main()
