"""Issue 2 target (b): DeflatedCG with subdomain (coarse) deflation on the (b128) and
(b3d) Darcy sequences of `krylov_recycling.py` (same directory).

Runs the benchmark's own `run_case` (same draw, tolerance, timing: process CPU time,
threads pinned; peers timed on the first `--peer-systems`), then, in the same
process and on the same systems, the coarse-deflation rows:

* `DeflatedCG(recycle=0, coarse_blocks=B)`: subdomain deflation alone, all systems;
* the same with carried Ritz vectors on top (`recycle=K`, `harvest_every=H`),
  similarity order, all systems;
* with the Jacobi preconditioner: `lineax.CG` + Jacobi and scipy cg + Jacobi on the
  first `--peer-systems`, jaxnum CG + Jacobi and the coarse rows + Jacobi on all
  systems (jaxnum CG without a preconditioner too, through `run_case`). Products are
  compared over the systems both rows cover; for like-for-like times pass
  `--peer-systems` equal to `--systems`.

Every coarse row is also re-run one system per jitted call (`kr.stepped_sequence`),
which gives per-system times: the rows print mean and median CPU times, and the
ratios come both ways (`time ...` of means, `median time ...` of medians).

    python benchmarks/deflated_cg.py --cases b128 b3d --systems 200 --peer-systems 8 \
        --count-systems 2 --ritz 8 50 --json
"""
# ruff: noqa: I001  (the benchmark module pins threads before jax is imported)

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import krylov_recycling as kr  # pins threads before jax is imported

import argparse
import json

import jax
import lineax as lx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import jaxnum.linalg as jl

RTOL = kr.RTOL


def extra_rows(name, args, rows):
    N = args.systems
    P = min(args.peer_systems, N)
    params, make, rhs, _, desc = kr.make_case(name, N, args.seed)
    b_np = np.asarray(rhs).ravel()
    mats = [kr.to_csr(make(kr.take(params, i))) for i in range(P)]
    refs = [spla.spsolve(A.tocsc(), b_np) for A in mats[: args.ref_systems]]
    B = args.blocks2d if len(rhs.shape) == 2 else args.blocks3d

    def record(label, mv, cpu, wall, sols, note="", per=1, residuals=None, clocks=None):
        kr.record_row(rows, label, mv, cpu, wall, sols, mats, b_np, refs, note=note, per=per, width=58,
                      residuals=residuals, clocks=clocks)

    check = kr.true_residuals(make, rhs)

    # Jacobi peers on the first P systems.
    times, sols, mvs = [], [], []
    for A in mats:
        d = A.diagonal()
        M = sp.diags(1.0 / d)
        with kr.Clock() as c:
            sols.append(spla.cg(A, b_np, rtol=RTOL, atol=0.0, maxiter=20 * b_np.size, M=M)[0])
        times.append(c)
        cnt = kr.Counter()
        def mv(v, A=A, cnt=cnt):
            cnt.n += 1
            return A @ v
        spla.cg(spla.LinearOperator(A.shape, matvec=mv, dtype=A.dtype), b_np, rtol=RTOL, atol=0.0,
                maxiter=20 * b_np.size, M=M)
        mvs.append(cnt.n)
    record("scipy cg + Jacobi", mvs, sum(t.cpu for t in times), sum(t.wall for t in times), sols, per=P,
           clocks=times)

    def lineax_pcg(p, counter=None):
        op = make(p)
        pre = lx.TaggedLinearOperator(jl.jacobi(op), lx.positive_semidefinite_tag)  # lineax asks for the tag
        if counter is not None:
            op = kr_counted(op, counter)
        return lx.linear_solve(op, rhs, lx.CG(rtol=RTOL, atol=0.0, norm=kr.rms_norm, max_steps=20 * rhs.size),
                               options={"preconditioner": pre}, throw=False).value

    f = jax.jit(lineax_pcg)
    jax.block_until_ready(f(kr.take(params, 0)))
    times, sols = [], []
    for i in range(P):
        with kr.Clock() as c:
            sols.append(jax.block_until_ready(f(kr.take(params, i))))
        times.append(c)
    mvs = []
    for i in range(min(P, args.count_systems)):
        cnt = kr.Counter()
        jax.block_until_ready(lineax_pcg(kr.take(params, i), cnt))
        jax.effects_barrier()
        mvs.append(cnt.n)
    record("lineax CG + Jacobi", mvs, sum(t.cpu for t in times), sum(t.wall for t in times), sols, per=P,
           clocks=times)

    # jaxnum CG + Jacobi on every system, like the coarse rows it is compared with.
    fn = lambda q: jl.solve_sequence(make, q, rhs, jl.CG(RTOL, 0.0), order="given",
                                     preconditioner=jl.jacobi, throw=False)
    out, t = kr.time_sequence(fn, params)
    record("jaxnum CG + Jacobi", np.asarray(out.stats["num_matvecs"]), t.cpu, t.wall, list(out.value[:P]), per=N,
           residuals=check(params, out.value))

    runs = []
    for pre in (None, jl.jacobi):
        tag = " + Jacobi" if pre is not None else ""
        runs.append((jl.DeflatedCG(RTOL, 0.0, recycle=0, coarse_blocks=B), f"DeflatedCG(coarse_blocks={B}){tag}", "given", pre))
        for k, h in args.ritz:
            runs.append((jl.DeflatedCG(RTOL, 0.0, recycle=k, harvest_every=h, coarse_blocks=B),
                         f"DeflatedCG(coarse_blocks={B}, k={k}, harvest_every={h}){tag}", "similarity", pre))
    for solver, label, order, pre in runs:
        fn = lambda q, s=solver, o=order, pr=pre: jl.solve_sequence(make, q, rhs, s, order=o, preconditioner=pr, throw=False)
        out, t = kr.time_sequence(fn, params)
        mv = np.asarray(out.stats["num_matvecs"])
        carried = float(np.mean(np.asarray(out.stats["carried"])))
        conv = int(np.sum(np.asarray(out.result == lx.RESULTS.successful)))
        # Per-system times (for medians): the same solves, one jitted call each.
        clocks, mv_step = kr.stepped_sequence(make, rhs, params, solver, out.order, preconditioner=pre)
        kr.check_stepped(label, mv, mv_step, clocks, t)
        record(f"jaxnum {label}, {order}", mv, t.cpu, t.wall, list(out.value[:P]), clocks=clocks,
               note=f"(all {N}; carried {carried:.0%}; converged {conv}/{N}; max stat residual {float(np.max(np.asarray(out.stats['residual']))):.1e})", per=N,
               residuals=check(params, out.value))
    return desc


def kr_counted(op, counter):
    def mv(v):
        jax.debug.callback(lambda _: setattr(counter, "n", counter.n + 1), v[(0,) * v.ndim])
        return op.mv(v)
    return lx.FunctionLinearOperator(mv, op.in_structure(), op.tags)


def summary(rows):
    out = {}
    cg, lin = rows["jaxnum CG"], rows["lineax CG"]
    for label, r in rows.items():
        if "coarse_blocks" not in label:
            continue
        pcg = "+ Jacobi" in label
        base = rows["jaxnum CG + Jacobi"] if pcg else cg
        lbase = rows["lineax CG + Jacobi"] if pcg else lin
        # Products over the systems both rows cover; a time ratio between rows over
        # different numbers of systems says so in its name (see `kr.time_ratio`).
        entry = {}
        kr.put_mv(entry, "matvecs CG / this", base, r)
        kr.put_mv(entry, "matvecs plain CG / this", cg, r)
        kr.time_ratio(entry, "time lineax CG / this", lbase, r)
        kr.time_ratio(entry, "time plain lineax CG / this", lin, r)
        kr.time_ratio(entry, "time jaxnum CG / this", base, r)
        out[label] = entry
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=["b128", "b3d"])
    parser.add_argument("--systems", type=int, default=200)
    parser.add_argument("--peer-systems", type=int, default=8)
    parser.add_argument("--count-systems", type=int, default=2)
    parser.add_argument("--ref-systems", type=int, default=2, help="solutions checked against spsolve")
    parser.add_argument("--blocks2d", type=int, default=8)
    parser.add_argument("--blocks3d", type=int, default=4)
    parser.add_argument("--ritz", type=int, nargs=2, action="append", metavar=("K", "H"), default=None,
                        help="coarse + Ritz rows DeflatedCG(recycle=K, harvest_every=H, coarse_blocks=B)")
    parser.add_argument("--dcg-recycle", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.ritz = args.ritz or []
    # The benchmark's own options for its (b) rows: DeflatedCG(k=20) in given and
    # similarity order, no cheap row, no warm-start rows (as in session 4).
    # Every other option keeps krylov_recycling.py's default (a Namespace built by hand
    # here broke when that script gained options).
    base = kr.build_parser().parse_args([])
    base.systems, base.peer_systems = args.systems, args.peer_systems
    base.count_systems, base.dcg_recycle = args.count_systems, args.dcg_recycle
    base.harvest_every, base.warm_start, base.seed = 2, 0, args.seed
    results = {}
    for name in args.cases:
        desc, rows = kr.run_case(name, base)
        extra_rows(name, args, rows)
        results[name] = {"description": desc, "rows": rows, "ratios": kr.ratios(name, rows), "coarse": summary(rows)}
        print(json.dumps(results[name]["coarse"], indent=1), flush=True)
    if args.json:
        print("JSON " + json.dumps({"systems": args.systems, "peer_systems": args.peer_systems,
                                    "blocks2d": args.blocks2d, "blocks3d": args.blocks3d,
                                    "xla_flags": os.environ.get("XLA_FLAGS"), "results": results}))


if __name__ == "__main__":
    main()
