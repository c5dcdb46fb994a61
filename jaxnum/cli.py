"""The `jaxnum` command.

- `jaxnum demo`: the main job on its embedded defaults (see `jaxnum demo --help`).
- `jaxnum generate <problem>`: a neural-operator dataset from the problem catalogue,
  written to HDF5 (resumable; see `docs/data.md`).
- `jaxnum train <file.h5>`: train a neural operator on such a file (checkpointed,
  resumable).
- `jaxnum bench recycling`: one sequence of related 2D variable-coefficient systems
  solved three ways (independent GMRES, recycled GCRO-DR in the given order and in
  similarity order), with what each cost.
"""

import argparse
import sys
import time


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxnum",
        description="jaxnum: differentiable scientific computing on JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from ._demo import add_demo_parser
    from .data._cli import add_generate_parser
    from .train._cli import add_train_parser

    add_demo_parser(sub)
    add_generate_parser(sub)
    add_train_parser(sub)
    bench = sub.add_parser("bench", help="quick side-by-side comparisons")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    demo = bench_sub.add_parser(
        "recycling",
        help="solve a sequence of related PDE systems with and without recycling",
        description=(
            "Solves a sequence of 2D steady convection-diffusion systems "
            "-div(a grad u) + v.grad u = 1 with log-normal random coefficients a "
            "(one per system) three ways: independent GMRES(m), recycled GCRO-DR(m, k) "
            "in the given order, and recycled GCRO-DR in similarity order. Prints "
            "matrix-vector products, time and residuals."
        ),
    )
    demo.add_argument("--resolution", type=_positive_int, default=48, help="grid points per axis (default 48)")
    demo.add_argument("--samples", type=_positive_int, default=48, help="systems in the sequence (default 48)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--velocity", type=float, default=10.0, help="convection speed (default 10)")
    demo.add_argument("--spread", type=_positive_float, default=0.3,
                      help="std of each system's log-coefficient around a shared field (default 0.3)")
    demo.add_argument("--rtol", type=_positive_float, default=1e-8, help="relative tolerance (default 1e-8)")
    demo.add_argument("--restart", type=_positive_int, default=40, help="Krylov dimension m (default 40)")
    demo.add_argument("--recycle", type=_positive_int, default=20, help="recycle dimension k < m (default 20)")
    demo.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    return parser


def bench_recycling(args) -> int:
    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    import lineax as lx
    import numpy as np

    from . import linalg as jl
    from ._families import convection_diffusion_family, gaussian_random_field

    if args.recycle >= args.restart:
        print(f"jaxnum bench recycling: --recycle ({args.recycle}) must be smaller than --restart ({args.restart}).", file=sys.stderr)
        return 2
    n, N = args.resolution, args.samples
    key_base, key_var = jr.split(jr.PRNGKey(args.seed))
    # A family of related systems: a shared log-coefficient plus per-system variation.
    base = gaussian_random_field(key_base, 1, (n, n))
    params = base + args.spread * gaussian_random_field(key_var, N, (n, n))
    velocity = jnp.asarray([args.velocity, 0.5 * args.velocity])
    rhs = jnp.ones((n, n), params.dtype)

    def make(p):
        return convection_diffusion_family(p, velocity)

    m, k = args.restart, args.recycle
    runs = [
        (f"GMRES({m}), independent", jl.GMRES(args.rtol, 0.0, restart=m), "given"),
        (f"GCRO-DR({m},{k}), given order", jl.GCRODR(args.rtol, 0.0, restart=m, recycle=k), "given"),
        (f"GCRO-DR({m},{k}), similarity order", jl.GCRODR(args.rtol, 0.0, restart=m, recycle=k), "similarity"),
    ]
    print(f"jaxnum bench recycling: {N} convection-diffusion systems on a {n}x{n} grid "
          f"({n * n} unknowns), rtol {args.rtol:g}, {jax.default_backend()} backend, "
          f"{'float32' if args.float32 else 'float64'}")
    rows = []
    for label, solver, order in runs:
        fn = jax.jit(lambda p, s=solver, o=order: jl.solve_sequence(make, p, rhs, s, order=o, throw=False))
        t0 = time.perf_counter()
        compiled = fn.lower(params).compile()
        t1 = time.perf_counter()
        out = compiled(params)
        jax.block_until_ready(out.value)
        t2 = time.perf_counter()
        mv = np.asarray(out.stats["num_matvecs"])
        res = np.asarray(out.stats["residual"])
        ok = int(np.sum(np.asarray(out.result == lx.RESULTS.successful)))
        rows.append((label, mv.sum(), np.median(mv), t2 - t1, t1 - t0, res.max(), ok))
    base_mv, base_t = rows[0][1], rows[0][3]
    header = f"{'method':34s} {'matvecs':>9s} {'median/sys':>10s} {'vs GMRES':>8s} {'time [s]':>9s} {'speed-up':>8s} {'max resid':>10s} {'converged':>9s}"
    print(header)
    print("-" * len(header))
    for label, total, med, t, tc, res, ok in rows:
        print(f"{label:34s} {total:9d} {med:10.0f} {base_mv / total:7.2f}x {t:9.2f} {base_t / t:7.2f}x {res:10.2e} {ok:5d}/{N}")
    print("(time excludes compilation; residuals are true relative residuals ||b - Ax|| / ||b||)")
    return 0 if all(r[-1] == N for r in rows) else 1


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args)
    if args.command == "train":
        from .train._cli import run_train

        return run_train(args)
    if args.command == "bench":
        return bench_recycling(args)
    if args.command == "generate":
        from .data._cli import run_generate

        return run_generate(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
