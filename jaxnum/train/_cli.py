"""The `jaxnum train` sub-command, and saving/loading a trained model without pickle."""

import argparse
import json
import os
import sys

import equinox as eqx

from ._checkpoint import atomic_write_bytes, atomic_write_json

MODEL_FILE, SPEC_FILE = "model.eqx", "model.json"


def _build(spec: dict, key=None):
    """An untrained model with the structure `spec` describes (fresh weights from
    `key`; also the template a saved model is loaded into)."""
    import jax.random as jr

    from .. import nn as jnn
    from ._normalise import ChannelNormaliser, NormalisedModel

    arch = spec["architecture"]
    builders = {"fno": jnn.FNO, "tfno": jnn.TFNO}
    if arch not in builders:
        raise ValueError(f"Unknown architecture {arch!r} in a saved model; known: {sorted(builders)}.")
    kwargs = dict(spec["kwargs"])
    kwargs["modes"] = tuple(kwargs["modes"])
    model = builders[arch](key=jr.PRNGKey(0) if key is None else key, **kwargs)
    if spec.get("normalised"):
        model = NormalisedModel(
            model, ChannelNormaliser.empty(kwargs["in_channels"]), ChannelNormaliser.empty(kwargs["out_channels"])
        )
    return model


def save_model(directory: str | os.PathLike, model, spec: dict) -> None:
    """Writes `model` (arrays, `equinox.tree_serialise_leaves`) and `spec` (JSON:
    `architecture`, constructor `kwargs`, `normalised`) into `directory`, atomically."""
    import io

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, model)
    atomic_write_bytes(os.path.join(directory, MODEL_FILE), buf.getvalue())
    atomic_write_json(os.path.join(directory, SPEC_FILE), spec)


def load_model(directory: str | os.PathLike):
    """Loads a model written by `save_model` (or `jaxnum train --out DIR`).

    **Returns:** `(model, spec)`.
    """
    directory = os.fspath(directory)
    try:
        with open(os.path.join(directory, SPEC_FILE)) as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{directory!r} holds no readable {SPEC_FILE} ({e}); train a model with `jaxnum train`.") from None
    template = _build(spec)
    try:
        model = eqx.tree_deserialise_leaves(os.path.join(directory, MODEL_FILE), template)
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{directory!r}: {MODEL_FILE} does not match {SPEC_FILE} or is corrupt ({e}).") from None
    return model, spec


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _eval_spec(text):
    if "=" in text:
        name, path = text.split("=", 1)
        return name, path
    return os.path.splitext(os.path.basename(text))[0], text


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `train` sub-command to an `argparse` sub-parsers object."""
    p = subparsers.add_parser(
        "train",
        help="train a neural operator on a jaxnum HDF5 dataset",
        description=(
            "Trains an FNO/TFNO on a dataset written by `jaxnum generate` (relative L2 loss, "
            "AdamW with a cosine schedule, channel-wise normalisers), evaluates it on held-out "
            "samples and on further files (e.g. other resolutions), and writes the model, its "
            "history and checkpoints to --out. Interrupted runs resume: run the same command again."
        ),
    )
    p.add_argument("data", help="training HDF5 file (jaxnum generate)")
    p.add_argument("--out", required=True, help="output directory (model, history.json, checkpoints/)")
    p.add_argument("--eval", action="append", default=[], type=_eval_spec, metavar="[NAME=]FILE",
                   help="evaluate on this file too (repeatable), e.g. 128=darcy_128.h5")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="last fraction of the training file held out as the `test` set (default 0.1)")
    p.add_argument("--model", choices=("fno", "tfno"), default="fno")
    p.add_argument("--modes", type=_positive_int, default=12, help="Fourier modes per axis (default 12)")
    p.add_argument("--width", type=_positive_int, default=32)
    p.add_argument("--depth", type=_positive_int, default=4)
    p.add_argument("--rank", type=float, default=0.1, help="TFNO: fraction of the dense parameters")
    p.add_argument("--objective", choices=("supervised", "teacher-forcing", "curriculum", "pushforward"),
                   default="supervised", help="time-dependent data: one-step training regime")
    p.add_argument("--pushforward", type=_positive_int, default=2, help="max unrolled steps for --objective pushforward")
    p.add_argument("--loss", choices=("l2", "h1", "mse"), default="l2")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", action="store_true", help="split batches across all local devices")
    p.add_argument("--float64", action="store_true", help="train in float64 (default float32)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_train(args) -> int:
    """Runs `jaxnum train` from parsed arguments; returns the exit status."""
    import jax

    jax.config.update("jax_enable_x64", bool(args.float64))
    import jax.random as jr
    import numpy as np
    import optax

    from .. import train as jt

    def fail(msg):
        print(f"jaxnum train: error: {msg}", file=sys.stderr)
        return 2

    if not 0.0 <= args.test_fraction < 1.0:
        return fail(f"--test-fraction must be in [0, 1); got {args.test_fraction}.")
    opened = []
    try:
        full = jt.HDF5Dataset(args.data)
        opened.append(full)
        n = len(full)
        n_test = round(args.test_fraction * n)
        if n - n_test < args.batch_size:
            return fail(f"{n - n_test} training samples are fewer than --batch-size {args.batch_size}.")
        train = jt.HDF5Dataset(args.data, indices=np.arange(n - n_test))
        opened.append(train)
        evals = {}
        if n_test:
            evals["test"] = jt.HDF5Dataset(args.data, indices=np.arange(n - n_test, n))
            opened.append(evals["test"])
        for name, path in args.eval:
            evals[name] = jt.HDF5Dataset(path)
            opened.append(evals[name])

        if args.objective == "supervised":
            objective = jt.Supervised()
        else:
            objective = jt.Autoregressive(
                curriculum=jt.TanhCurriculum() if args.objective == "curriculum" else None,
                pushforward=args.pushforward if args.objective == "pushforward" else 0,
            )
        in_shape, out_shape = objective.expected_output(train)
        ndim = len(in_shape) - 1
        kwargs = {
            "in_channels": in_shape[0], "out_channels": out_shape[0], "modes": [args.modes] * ndim,
            "width": args.width, "depth": args.depth,
        }
        if args.model == "tfno":
            kwargs["rank"] = args.rank
        spec = {"architecture": args.model, "kwargs": kwargs, "normalised": True}
        key_model, key_train = jr.split(jr.PRNGKey(args.seed))
        model = _build(dict(spec, normalised=False), key_model)  # fit adds the normalisers
        loss = {"l2": jt.RelativeLp(), "h1": jt.RelativeH1(), "mse": jt.MSE()}[args.loss]
        steps = args.epochs * ((n - n_test) // args.batch_size)
        optimiser = optax.adamw(optax.cosine_decay_schedule(args.lr, steps, alpha=1e-2), weight_decay=args.weight_decay)
        trainer = jt.Trainer(
            optimiser, loss, objective, epochs=args.epochs, batch_size=args.batch_size,
            parallel=jt.DataParallel() if args.parallel else None,
        )
        os.makedirs(args.out, exist_ok=True)
        trained, history = trainer.fit(
            model, train, key=key_train, eval_data=evals,
            checkpoint_dir=os.path.join(args.out, "checkpoints"),
            metrics_path=os.path.join(args.out, "history.json"), progress=not args.no_progress,
        )
        save_model(args.out, trained, spec)
    except ValueError as e:
        return fail(str(e))
    finally:
        for ds in opened:
            ds.close()
    last = history[-1]
    print(f"jaxnum train: {len(history)} epochs, final train loss {last['train_loss']:.4g}")
    for name, metrics in last.get("eval", {}).items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    print(f"  model: {os.path.join(args.out, MODEL_FILE)}")
    return 0

