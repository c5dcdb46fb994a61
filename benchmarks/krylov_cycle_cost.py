"""Where a GCRO-DR cycle's time goes, per setting (one system of a `krylov_recycling` case).

Issue 2's (a) targets ask for large recycle spaces (products) and short times at once.
This script splits the cost of GCRO-DR(m, k) on one system of a case into its parts,
each jitted and timed on its own (median of `--repeats`):

- `gs`: one classical Gram-Schmidt pass (`W^T w`, then `w - W h`) over `k + (m - k)/2`
  rows, the average an Arnoldi step of a cycle reads (the memory-bound floor);
- `matvec`: one product with the operator;
- `cycle`: one whole Arnoldi cycle of `m - k` steps projected against `k` rows of `C`;
- `harvest`: one harmonic-Ritz refresh of the space after such a cycle;
- `solve`: a whole solve of the case's second system carrying the first one's space,
  with its products, cycles, time per cycle and per product.

Compare the rows with `lineax.GMRES(40)`'s time per product from
`krylov_recycling.py` (about 0.33 ms at 128^2 in session 9). Pin the process:

    taskset -c 1 python benchmarks/krylov_cycle_cost.py a128 --gcrodr 40 20 4 --gcrodr 80 60 4
"""
# ruff: noqa: I001  (krylov_recycling pins threads before jax is imported)

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import krylov_recycling as kr  # pins threads, enables float64

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import jaxnum.linalg as jl
from jaxnum.linalg._arnoldi import arnoldi_cycle, block_comb, block_dot
from jaxnum.linalg._gcrodr import harmonic_ritz_harvest
from jaxnum.linalg._misc import check_square, vec_matvec


def median_ms(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", nargs="?", default="a128")
    parser.add_argument("--gcrodr", type=int, nargs=3, action="append", metavar=("M", "K", "H"),
                        help="GCRO-DR(restart=M, recycle=K, harvest_every=H); default (40, 20, 4) and (80, 60, 4)")
    parser.add_argument("--max-steps", type=int, default=1500,
                        help="products per timed solve at most (the same for every setting)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--projection-dtype", default=None, choices=["float32", "float64"],
                        help="GCRODR(projection_dtype=...): the precision C is held in")
    args = parser.parse_args()
    settings = [tuple(g) for g in args.gcrodr] if args.gcrodr else [(40, 20, 4), (80, 60, 4)]
    params, make, rhs, _, desc = kr.make_case(args.case, 2, 0)
    op1, op2 = make(kr.take(params, 0)), make(kr.take(params, 1))
    flat = check_square(op2, "krylov_cycle_cost")
    matvec = vec_matvec(op2, flat)
    shape = flat.vec_shape
    rng = np.random.default_rng(0)
    r = jnp.asarray(rng.standard_normal(shape))
    t_mv = median_ms(jax.jit(matvec), r, repeats=20 * args.repeats)
    print(f"({args.case}) {desc}: {flat.size} unknowns; matvec {t_mv:.3f} ms", flush=True)
    gs = jax.jit(lambda W, w: w - block_comb(block_dot(W, w), W))
    for m, k, h in settings:
        S = m - k
        rows = k + S // 2
        W = jnp.asarray(rng.standard_normal((rows, *shape)))
        t_gs = median_ms(gs, W, r, repeats=20 * args.repeats)
        # The recycle pair of a solve of op1 (C orthonormal). The cycle and harvest
        # timings do not need A U = C for op2; the timed solve re-projects the pair.
        first = lx.linear_solve(op1, rhs, jl.GCRODR(kr.RTOL, 0.0, restart=m, recycle=k), throw=False)
        space = first.stats["recycle"]
        Ct = space.image.T.reshape(k, *shape)
        if args.projection_dtype:
            Ct = Ct.astype(args.projection_dtype)
        Ut = space.basis.T.reshape(k, *shape)
        cycle_fn = jax.jit(
            lambda r, Ct, S=S: arnoldi_cycle(matvec, lambda v: v, r, jnp.linalg.norm(r), Ct, S, S, 0.0)
        )
        t_cycle = median_ms(cycle_fn, r, Ct, repeats=args.repeats)
        cycle = cycle_fn(r, Ct)
        harvest = harmonic_ritz_harvest(k)
        Uf = Ut.reshape(k, -1)
        grams = (Ct.reshape(k, -1) @ Uf.T, Uf @ Uf.T)
        harvest_fn = jax.jit(lambda U, C, g, c, hv=harvest: hv(U, C, jnp.array(True), g, c))
        t_harvest = median_ms(harvest_fn, Ut, Ct, grams, cycle, repeats=args.repeats)
        solver = jl.GCRODR(kr.RTOL, 0.0, restart=m, recycle=k, harvest_every=h, max_steps=args.max_steps,
                           projection_dtype=args.projection_dtype)
        solve_fn = jax.jit(
            lambda sp, s=solver: lx.linear_solve(op2, rhs, s, options={"recycle": sp}, throw=False).stats
        )
        stats = solve_fn(space)
        t_solve = median_ms(solve_fn, space, repeats=max(1, args.repeats // 2))
        mv, cyc = int(stats["num_matvecs"]), int(stats["num_restarts"])
        print(
            f"GCRO-DR({m},{k}, h={h}): gs over {rows} rows {t_gs:.3f} ms | cycle of {S} steps "
            f"{t_cycle:.2f} ms ({t_cycle / S:.3f} per step; gs + matvec {t_gs + t_mv:.3f}) | harvest "
            f"{t_harvest:.2f} ms | solve {t_solve:.1f} ms, {mv} products, {cyc} cycles: "
            f"{t_solve / cyc:.2f} ms per cycle, {t_solve / mv:.3f} ms per product",
            flush=True,
        )


if __name__ == "__main__":
    main()
