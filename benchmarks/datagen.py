"""Darcy data generation: jaxnum.data.generate against independent per-sample solves.

Cases: Darcy flow `-div(a grad u) = 1` (the FNO set-up: `a` in {12, 3} thresholded
from a Gaussian random field, zero Dirichlet walls; `jaxnum.pde.Darcy`) in 2D at 64^2
and 128^2 and in 3D at 32^3, float64, relative tolerance 1e-8 on the true residual.

- jaxnum: `jaxnum.data.generate(Darcy, N)`, end to end: sampling the coefficients,
    similarity ordering from their features, the solves, and writing the HDF5 file.
    Rows: the default configuration (`Darcy.default_generation_solver()`, CG, with
    `Darcy.default_preconditioner()`, a float32 multigrid V-cycle built per sample);
    `DeflatedCG(k=4)` with the same preconditioner, carrying its deflation space
    along the ordered samples; the previous default, `DeflatedCG(k=20)` recycled
    without a preconditioner; optionally (`--cg-row`) plain CG without one.
    Compilation is excluded by a warm-up generation with another seed first (N
    samples for the first row, so the ordering program is compiled too; the later
    rows reuse it and warm up on two chunks).
- peers, on the first `--peer-samples` samples (the same coefficients): independent
    `lineax.CG` solves (`jit` once, one call per sample, two-norm stopping rule with
    the same `rtol`), `scipy.sparse.linalg.cg` and `gmres(restart=40)` (`rtol`, `atol=0`)
    and `spsolve`. Peers are timed on the solve only (matrix assembly and sampling
    excluded), which favours them.

Each peer's solutions are checked against jaxnum's stored outputs before its time
counts. Times are process CPU time with every side single-threaded (threads pinned
below), so they are the compute each side spent on a shared box; throughput is
samples per CPU second.

    python benchmarks/datagen.py --samples 500 --peer-samples 50 --json
"""

import os

import _pin  # (pins threads and the core before numpy/jax/torch)

# isort: split

import argparse
import json
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import h5py
import lineax as lx
import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from krylov_recycling import (
    rms_norm,  # lineax's test made the 2-norm test of the others
)

import jaxnum.linalg as jl
from jaxnum.data import generate, sample_key
from jaxnum.pde import Darcy

CASES = {"2d64": (64, 2), "2d128": (128, 2), "3d32": (32, 3)}


class Clock:
    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


def to_csr(operator):
    bcoo = operator.as_bcoo()
    idx = np.asarray(bcoo.indices)
    return sp.csr_matrix((np.asarray(bcoo.data), (idx[:, 0], idx[:, 1])), shape=bcoo.shape)


def jaxnum_row(problem, name, tag, label, args, workdir, *, solver=None, preconditioner="default",
               warm_samples=None, reference=None):
    """Times `generate` end to end (compilation excluded by a warm-up generation
    with another seed first); returns the row and the first peer samples' outputs."""
    N, P, chunk = args.samples, min(args.peer_samples, args.samples), args.chunk_size
    kw = {"chunk_size": chunk, "progress": False, "solver": solver, "preconditioner": preconditioner}
    generate(problem, warm_samples or 2 * chunk, os.path.join(workdir, f"{name}-{tag}-warm.h5"),
             seed=args.seed + 1, **kw)
    path = os.path.join(workdir, f"{name}-{tag}.h5")
    with Clock() as c:
        generate(problem, N, path, seed=args.seed, **kw)
    with h5py.File(path, "r") as f:
        outputs = f["outputs"][:P, 0]
        carried = f["stats/carried"][()] if "stats/carried" in f else None
        err = 0.0
        if reference is not None:
            err = np.max(np.linalg.norm((outputs - reference).reshape(P, -1), axis=1)
                         / np.linalg.norm(reference.reshape(P, -1), axis=1))
        row = {
            "method": f"jaxnum generate ({label})", "samples": N, "cpu_s": c.cpu, "wall_s": c.wall,
            "matvecs_median": float(np.median(f["stats/num_matvecs"][()])),
            "max_residual": float(f["stats/residual"][()].max()), "max_error": float(err),
            "converged": int(np.sum(f["stats/result"][()] == 0)),
            "note": "" if carried is None else f"{label.split(',')[0]}: carried on {100 * carried.mean():.0f}% of solves",
            "config": {"solver": f.attrs["solver"], "preconditioner": f.attrs["preconditioner"]},
        }
    return row, outputs


def run_case(name, args, workdir):
    resolution, ndim = CASES[name]
    problem = Darcy(resolution, ndim)
    rtol = problem.rtol
    N, P = args.samples, min(args.peer_samples, args.samples)
    # Row 1, the default configuration (the problem's default_generation_solver and
    # default_preconditioner: CG + a float32 multigrid V-cycle). Its warm-up has N
    # samples, so that the similarity ordering of N samples is compiled outside the
    # timed run too (the later rows reuse it).
    first, outputs = jaxnum_row(
        problem, name, "default", "default: CG + multigrid float32, similarity order, nothing carried",
        args, workdir, warm_samples=N,
    )
    rows = [first]
    if not args.no_recycled_rows:
        # Recycling with the preconditioner: a small deflation space carried along.
        rows.append(jaxnum_row(
            problem, name, "dcg4-mg", "DeflatedCG k=4 + multigrid float32, similarity order, recycled",
            args, workdir, solver=jl.DeflatedCG(rtol=rtol, atol=0.0, recycle=4), reference=outputs,
        )[0])
        # The previous default: recycling without a preconditioner.
        k = problem.default_solver().recycle
        rows.append(jaxnum_row(
            problem, name, f"dcg{k}", f"DeflatedCG k={k}, no preconditioner, similarity order, recycled",
            args, workdir, solver=problem.default_solver(), preconditioner=None, reference=outputs,
        )[0])
    if args.cg_row:
        rows.append(jaxnum_row(
            problem, name, "cg", "CG, no preconditioner, similarity order, nothing carried",
            args, workdir, solver=jl.CG(rtol=rtol, atol=0.0), preconditioner=None, reference=outputs,
        )[0])

    # The same samples for the peers.
    sample = jax.jit(problem.sample_parameters)
    params = [sample(sample_key(args.seed, i)) for i in range(P)]
    b = np.asarray(problem.rhs(params[0])).ravel()
    bnorm = np.linalg.norm(b)
    mats = [to_csr(problem.operator(p)) for p in params]
    ref = outputs.reshape(P, -1)

    def check(label, sols, count, cpu, wall, note=""):
        sols = [np.asarray(s).ravel() for s in sols]
        res = max(np.linalg.norm(b - mats[i] @ sols[i]) / bnorm for i in range(count))
        err = max(np.linalg.norm(sols[i] - ref[i]) / np.linalg.norm(ref[i]) for i in range(count))
        rows.append({"method": label, "samples": count, "cpu_s": cpu, "wall_s": wall,
                     "matvecs_median": None, "max_residual": float(res), "max_error": float(err),
                     "converged": int(sum(np.linalg.norm(b - mats[i] @ sols[i]) / bnorm <= 1.01 * rtol for i in range(count))),
                     "note": note})

    solver = lx.CG(rtol=rtol, atol=0.0, norm=rms_norm, max_steps=20 * b.size)
    solve = jax.jit(lambda p: lx.linear_solve(problem.operator(p), problem.rhs(p), solver, throw=False).value)
    jax.block_until_ready(solve(params[0]))
    with Clock() as c:
        sols = [jax.block_until_ready(solve(p)) for p in params]
    check("lineax CG, independent (jit once)", sols, P, c.cpu, c.wall)

    with Clock() as c:
        sols = [spla.cg(A, b, rtol=rtol, atol=0.0, maxiter=20 * b.size)[0] for A in mats]
    check("scipy cg", sols, P, c.cpu, c.wall)
    Pg = min(P, args.gmres_samples)
    with Clock() as c:
        sols = [spla.gmres(A, b, rtol=rtol, atol=0.0, restart=40, maxiter=400)[0] for A in mats[:Pg]]
    check("scipy gmres(40)", sols, Pg, c.cpu, c.wall)
    Ps = min(P, args.spsolve_samples if ndim == 3 else P)
    with Clock() as c:
        sols = [spla.spsolve(A.tocsc(), b) for A in mats[:Ps]]
    check("scipy spsolve (SuperLU)", sols, Ps, c.cpu, c.wall)
    for row in rows:
        row["samples_per_cpu_s"] = row["samples"] / row["cpu_s"]
    base = rows[0]["samples_per_cpu_s"]
    for row in rows:
        row["jaxnum_speedup"] = base / row["samples_per_cpu_s"]
    return {"case": name, "resolution": resolution, "ndim": ndim, "unknowns": int(b.size),
            "samples": N, "peer_samples": P, "rows": rows}


def render(case):
    lines = [
        (f"**Darcy {case['ndim']}D {case['resolution']}^{case['ndim']}** ({case['unknowns']} unknowns): "
        f"jaxnum on {case['samples']} samples, peers on the first {case['peer_samples']} (fewer where noted)."),
        "",
        "| method | samples timed | CPU s / sample | samples / CPU s | jaxnum throughput ratio | wall s / sample | matvecs / sample (median) | max rel. residual | max rel. error vs jaxnum | converged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in case["rows"]:
        mv = "-" if r["matvecs_median"] is None else f"{r['matvecs_median']:.0f}"
        lines.append(
            f"| {r['method']} | {r['samples']} | {r['cpu_s'] / r['samples']:.4f} | {r['samples_per_cpu_s']:.2f} | "
            f"{r['jaxnum_speedup']:.2f}x | {r['wall_s'] / r['samples']:.4f} | {mv} | {r['max_residual']:.1e} | "
            f"{r['max_error']:.1e} | {r['converged']}/{r['samples']} |"
        )
    notes = [r["note"] for r in case["rows"] if r["note"]]
    if notes:
        lines += ["", "jaxnum: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--peer-samples", type=int, default=40)
    parser.add_argument("--gmres-samples", type=int, default=10, help="scipy gmres is slow: at most this many")
    parser.add_argument("--spsolve-samples", type=int, default=5, help="3D spsolve: at most this many")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-recycled-rows", action="store_true",
                        help="skip the two recycled DeflatedCG runs (with and without multigrid)")
    parser.add_argument("--cg-row", action="store_true",
                        help="also run generate with plain CG and no preconditioner")
    parser.add_argument("--json", action="store_true", help="print one machine-readable line per case")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, lineax {lx.__version__ if hasattr(lx, '__version__') else '?'}, "
          f"scipy {scipy.__version__}; {_pin.describe()}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.cases:
            case = run_case(name, args, workdir)
            print(render(case), flush=True)
            print(flush=True)
            if args.json:
                print("JSON " + json.dumps(case), flush=True)


if __name__ == "__main__":
    main()
