"""Choosing between a Pallas kernel and its plain-JAX (XLA) reference."""

import jax


BACKENDS = ("auto", "pallas", "reference")


def use_pallas(backend: str) -> bool:
    """`"auto"` picks Pallas on GPU/TPU and the XLA reference on CPU.

    On CPU Pallas only runs in `interpret=True` mode (slow, for testing), so
    `"auto"` never chooses it there; `backend="pallas"` forces it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return jax.default_backend() in ("gpu", "tpu")
    return backend == "pallas"


def default_interpret(interpret):
    """`interpret=None` means: interpret exactly when there is no GPU/TPU."""
    if interpret is None:
        return jax.default_backend() not in ("gpu", "tpu")
    return bool(interpret)
