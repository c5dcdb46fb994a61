"""The `jaxnum generate` sub-command."""

import argparse
import json
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as coefficient=lognormal
    return key.strip(), value


PRECONDITIONERS = ("default", "none", "multigrid", "multigrid-float32", "jacobi")


def _preconditioner(name: str):
    import functools

    from .. import linalg

    return {
        "default": "default",
        "none": None,
        "multigrid": linalg.multigrid,
        "multigrid-float32": functools.partial(linalg.multigrid, dtype="float32"),
        "jacobi": linalg.jacobi,
    }[name]


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `generate` sub-command to an `argparse` sub-parsers object."""
    parser = subparsers.add_parser(
        "generate",
        help="generate a neural-operator dataset from a catalogue problem into HDF5",
        description=(
            "Samples a problem family and solves every sample: elliptic families as one "
            "similarity-ordered sequence (preconditioned; recycling solvers carry their "
            "Krylov subspace along it), time-dependent "
            "ones in vmap-ed batches, split across the local devices. Writes an HDF5 "
            "file (layout in docs/data.md). Interrupted runs resume: run the same "
            "command again. An existing file with another configuration is never "
            "overwritten."
        ),
    )
    parser.add_argument("problem", help="catalogue name, e.g. darcy, poisson, burgers")
    parser.add_argument("--samples", type=_positive_int, required=True, help="number of samples")
    parser.add_argument("--resolution", type=_positive_int, required=True, help="grid points per axis")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output HDF5 file")
    parser.add_argument("--ndim", type=_positive_int, default=None, help="spatial dimension, for problems that take one")
    parser.add_argument(
        "--option", "-o", type=_option, action="append", default=[], metavar="KEY=VALUE",
        help="further problem option (JSON value or bare string), repeatable",
    )
    parser.add_argument("--chunk-size", type=_positive_int, default=None, help="samples per stored chunk")
    parser.add_argument("--streams", type=_positive_int, default=None,
                        help="elliptic: independent recycled sub-sequences (default: local devices)")
    parser.add_argument(
        "--preconditioner", choices=list(PRECONDITIONERS), default="default",
        help="elliptic: the preconditioner built for every sample (default: the "
        "problem's, multigrid-float32 for darcy and poisson)",
    )
    parser.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_generate(args) -> int:
    """Runs `jaxnum generate` from parsed arguments; returns the exit status."""
    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    from ..pde._catalogue import problem_from_name
    from ._generate import generate

    options = dict(args.option)
    if args.ndim is not None:
        options["ndim"] = args.ndim
    try:
        problem = problem_from_name(args.problem, resolution=args.resolution, **options)
        generate(
            problem, args.samples, args.out, seed=args.seed, chunk_size=args.chunk_size,
            streams=args.streams, progress=not args.no_progress,
            preconditioner=_preconditioner(args.preconditioner),
        )
    except ValueError as e:
        print(f"jaxnum generate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\njaxnum generate: interrupted. Finished chunks are kept; run the same "
            "command again to resume.",
            file=sys.stderr,
        )
        return 130
    print(f"jaxnum generate: wrote {args.out}", file=sys.stderr)
    return 0
