"""What carrying the recycle space buys, over the same systems (products only).

A companion to `krylov_recycling.py` for issue 2's carry ratio and the growth table:
solves every system of a case of that benchmark (same draw) with jaxnum GMRES(40),
GCRO-DR without carrying (independent solves) and GCRO-DR in similarity order
(`solve_sequence`), for GCRO-DR(40, 20) and (50, 10) with `harvest_every=4`, and
prints each row's median and mean products per system over all systems and over the
first 8, so that the carry ratio compares the same systems. Products are
deterministic, so the load on the machine does not matter here; times are not
reported (use `krylov_recycling.py`).

    python benchmarks/krylov_carry.py a128 100
"""
# ruff: noqa: I001  (krylov_recycling pins threads before jax is imported)

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
    case, N = sys.argv[1], int(sys.argv[2])
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

    rows = {
        "GMRES(40)": (independent, jl.GMRES(kr.RTOL, 0.0, restart=40)),
        "GCRO-DR(40,20,h4) no carry": (independent, jl.GCRODR(kr.RTOL, 0.0, harvest_every=4)),
        "GCRO-DR(40,20,h4) similarity": (sequence, jl.GCRODR(kr.RTOL, 0.0, harvest_every=4)),
        "GCRO-DR(50,10,h4) no carry": (independent, jl.GCRODR(kr.RTOL, 0.0, restart=50, recycle=10, harvest_every=4)),
        "GCRO-DR(50,10,h4) similarity": (sequence, jl.GCRODR(kr.RTOL, 0.0, restart=50, recycle=10, harvest_every=4)),
    }
    out = {}
    for name, (run, solver) in rows.items():
        t0 = time.time()
        mv, res, carried = run(solver)
        out[name] = mv.tolist()
        extra = "" if carried is None else f" carried {carried:.0%}"
        print(f"{name:32s} all {N}: median {np.median(mv):7.1f} mean {mv.mean():7.1f} | first 8: median "
              f"{np.median(mv[:8]):7.1f} mean {mv[:8].mean():7.1f} | max res {res.max():.1e}{extra} "
              f"({time.time() - t0:.0f}s)", flush=True)
    for k in ("40,20", "50,10"):
        nc, sim = np.asarray(out[f"GCRO-DR({k},h4) no carry"]), np.asarray(out[f"GCRO-DR({k},h4) similarity"])
        print(f"carry ratio ({k}): median {np.median(nc) / np.median(sim):.3f}, mean {nc.mean() / sim.mean():.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
