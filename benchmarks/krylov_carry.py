"""What carrying the recycle space buys, over the same systems (products only).

A companion to `krylov_recycling.py` for issue 2's carry ratio and the growth table:
solves every system of a case of that benchmark (same draw) with jaxnum GMRES(40),
GCRO-DR without carrying (independent solves) and GCRO-DR in similarity order
(`solve_sequence`), for GCRO-DR(40, 20) and (50, 10) with `harvest_every=4` (or the
settings given with `--gcrodr M K H`), and prints each row's median and mean products
per system over all systems and over the first 8, so that the carry ratio compares
the same systems. Products are deterministic, so the load on the machine does not
matter here; times are not reported (use `krylov_recycling.py`).

`--coarse B` adds two-level deflation on blocks of edge B to every GCRO-DR row (and a
GMRES(40) + blocks row), to see what carrying adds on top of the block space.

`--full F` adds a reference row on the first F systems: GMRES without restarts
(`restart=R`, `--full-restart`, default 2500, with CGS2 re-orthogonalisation, since a
basis this long loses orthogonality with one Gram-Schmidt pass). Full GMRES gives the
smallest residual over the Krylov space of each size, so its products are what a
Krylov method needs *without outside information*; a solver below it on a system is
being helped by the recycled space. The row prints every row's products on the same F
systems beside it.

    python benchmarks/krylov_carry.py a128 100
    python benchmarks/krylov_carry.py a128 100 --full 8
    python benchmarks/krylov_carry.py a128 100 --gcrodr 60 40 4 --gcrodr 80 40 4
"""
# ruff: noqa: I001  (krylov_recycling pins threads before jax is imported)

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import krylov_recycling as kr  # pins threads, enables float64

import jax
import lineax as lx
import numpy as np

import jaxnum.linalg as jl


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case")
    parser.add_argument("systems", type=int)
    parser.add_argument("--full", type=int, default=0, metavar="F",
                        help="also run unrestarted GMRES on the first F systems")
    parser.add_argument("--full-restart", type=int, default=2500)
    parser.add_argument("--coarse", type=int, default=None, metavar="B",
                        help="two-level deflation on blocks of edge B (`coarse_blocks=B`) for every "
                             "GCRO-DR row, plus a GMRES(40) + blocks row")
    parser.add_argument(
        "--gcrodr", type=int, nargs=3, action="append", metavar=("M", "K", "H"),
        help="GCRO-DR(restart=M, recycle=K, harvest_every=H) rows instead of the default (40, 20, 4) and (50, 10, 4)",
    )
    args = parser.parse_args()
    case, N = args.case, args.systems
    params, make, rhs, _, desc = kr.make_case(case, N, 0)
    print(f"({case}) {desc}: {N} systems", flush=True)

    def independent(solver):
        def one(p):
            sol = lx.linear_solve(make(p), rhs, solver, throw=False)
            return sol.stats["num_matvecs"], sol.stats["residual"]

        mv, res = jax.jit(lambda q: jax.lax.map(one, q))(params)
        return np.asarray(mv), np.asarray(res), None

    def sequence(solver):
        fn = jax.jit(lambda q: jl.solve_sequence(make, q, rhs, solver, order="similarity", throw=False))
        out = fn(params)
        carried = float(np.mean(np.asarray(out.stats["carried"])))
        return np.asarray(out.stats["num_matvecs"]), np.asarray(out.stats["residual"]), carried

    settings = [tuple(g) for g in args.gcrodr] if args.gcrodr else [(40, 20, 4), (50, 10, 4)]
    cb = args.coarse
    tag = f" + coarse({cb})" if cb else ""
    rows = {"GMRES(40)": (independent, jl.GMRES(kr.RTOL, 0.0, restart=40))}
    if cb:
        rows[f"GMRES(40) + coarse({cb})"] = (independent, jl.GMRES(kr.RTOL, 0.0, restart=40, coarse_blocks=cb))
    for m, k, h in settings:
        solver = jl.GCRODR(kr.RTOL, 0.0, restart=m, recycle=k, harvest_every=h, coarse_blocks=cb)
        rows[f"GCRO-DR({m},{k},h{h}){tag} no carry"] = (independent, solver)
        rows[f"GCRO-DR({m},{k},h{h}){tag} similarity"] = (sequence, solver)
    out = {}
    for name, (run, solver) in rows.items():
        t0 = time.time()
        mv, res, carried = run(solver)
        out[name] = mv.tolist()
        extra = "" if carried is None else f" carried {carried:.0%}"
        print(f"{name:44s} all {N}: median {np.median(mv):7.1f} mean {mv.mean():7.1f} | first 8: median "
              f"{np.median(mv[:8]):7.1f} mean {mv[:8].mean():7.1f} | max res {res.max():.1e}{extra} "
              f"({time.time() - t0:.0f}s)", flush=True)
    gm = np.asarray(out["GMRES(40)"])
    for m, k, h in settings:
        key = f"{m},{k},h{h}"
        nc = np.asarray(out[f"GCRO-DR({key}){tag} no carry"])
        sim = np.asarray(out[f"GCRO-DR({key}){tag} similarity"])
        print(f"carry ratio ({key}): median {np.median(nc) / np.median(sim):.3f}, mean {nc.mean() / sim.mean():.3f}; "
              f"GMRES(40) / similarity: median {np.median(gm) / np.median(sim):.3f}, mean {gm.mean() / sim.mean():.3f}")
    if args.full:
        F = min(args.full, N)
        R = args.full_restart
        full = jl.GMRES(kr.RTOL, 0.0, restart=R, max_steps=2 * R, reorthogonalize=True)

        def one(p):
            sol = lx.linear_solve(make(p), rhs, full, throw=False)
            return sol.stats["num_matvecs"], sol.stats["residual"], sol.stats["num_restarts"]

        fn = jax.jit(one)
        t0 = time.time()
        got = [fn(kr.take(params, i)) for i in range(F)]
        mv = np.asarray([int(g[0]) for g in got])
        res = np.asarray([float(g[1]) for g in got])
        restarts = np.asarray([int(g[2]) for g in got])
        name = f"GMRES(restart={R}, CGS2)"
        out[name] = mv.tolist()
        print(f"{name} first {F}: {mv.tolist()} median {np.median(mv):.1f} mean {mv.mean():.1f} | "
              f"max res {res.max():.1e}, restarted on {int((restarts > 0).sum())} ({time.time() - t0:.0f}s)")
        print(f"on the same first {F} systems:")
        for k, v in out.items():
            v = np.asarray(v[:F])
            print(f"  {k:32s} median {np.median(v):7.1f} mean {v.mean():7.1f} | per system / full GMRES: "
                  f"median {np.median(v / mv):.2f}, min {np.min(v / mv):.2f}, max {np.max(v / mv):.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
