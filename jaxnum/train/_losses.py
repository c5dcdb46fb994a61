"""Losses for operator learning: relative Lp, relative H1, MSE, and the rollout nRMSE.

Every loss is a small `eqx.Module` holding its hyper-parameters. `per_sample(pred,
target)` works on ONE unbatched sample laid out `(channels, *spatial)` (or `(channels,
T, *spatial)`); calling the loss on a batch `(B, channels, ...)` applies `per_sample`
to every sample and reduces over the batch (`"mean"` by default, or `"sum"`).

Gradients are plain reverse-mode autodiff through these formulas. Relative losses
divide by the target's norm: a sample whose target is identically zero gives a
non-finite loss (as in `neuraloperator`'s `LpLoss`); pass `eps > 0` to guard it.
"""

import abc
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _check_reduction(reduction):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"`reduction` must be 'mean' or 'sum'; got {reduction!r}.")


def _check_pair(pred, target, what):
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"{what}: prediction has shape {jnp.shape(pred)} but the target has shape "
            f"{jnp.shape(target)}; the model's output must match the data's `outputs` "
            "(check the model's out_channels and the grid)."
        )


class AbstractLoss(eqx.Module):
    """A loss between a model's prediction and the target.

    Subclasses implement `per_sample`; `__call__` maps it over a leading batch axis.
    """

    reduction: eqx.AbstractVar[str]

    @abc.abstractmethod
    def per_sample(self, pred: Float[Array, " c *rest"], target: Float[Array, " c *rest"]) -> Float[Array, ""]:
        """The loss of one unbatched sample."""

    def __call__(self, pred: Float[Array, " B c *rest"], target: Float[Array, " B c *rest"]) -> Float[Array, ""]:
        """The loss of a batch `(B, channels, ...)`, reduced over `B`.

        **Returns:** a scalar: the mean (or sum) of `per_sample` over the batch.
        """
        _check_pair(pred, target, type(self).__name__)
        if jnp.ndim(pred) < 2:
            raise ValueError(
                f"{type(self).__name__} expects a batch `(B, channels, ...)`; got shape "
                f"{jnp.shape(pred)}. Use `.per_sample` for one sample."
            )
        values = jax.vmap(self.per_sample)(pred, target)
        return jnp.mean(values) if self.reduction == "mean" else jnp.sum(values)


class RelativeLp(AbstractLoss):
    """Relative Lp error $\\|u - v\\|_p / \\|v\\|_p$ per sample, the norm taken over
    all channels and grid points together (the FNO papers' metric; the uniform
    quadrature weight cancels, so the value does not depend on the resolution for a
    well-resolved field).

    Compare `neuralop.losses.LpLoss(d, p, reduction="mean")`.

    **Arguments:**

    - `p`: the exponent ($p \\geq 1$), 2 by default.
    - `reduction`: `"mean"` (default) or `"sum"` over the batch.
    - `eps`: added to the denominator (0 by default).
    """

    p: float = 2.0
    reduction: Literal["mean", "sum"] = "mean"
    eps: float = 0.0

    def __check_init__(self):
        _check_reduction(self.reduction)
        if not self.p >= 1:
            raise ValueError(f"RelativeLp needs p >= 1; got p={self.p}.")

    def per_sample(self, pred, target):
        _check_pair(pred, target, "RelativeLp")
        diff = jnp.ravel(pred - target)
        ref = jnp.ravel(target)
        if self.p == 2:
            num, den = jnp.linalg.norm(diff), jnp.linalg.norm(ref)
        else:
            num = jnp.sum(jnp.abs(diff) ** self.p) ** (1 / self.p)
            den = jnp.sum(jnp.abs(ref) ** self.p) ** (1 / self.p)
        return num / (den + self.eps)


class MSE(AbstractLoss):
    """Mean squared error per sample (mean over channels and grid points)."""

    reduction: Literal["mean", "sum"] = "mean"

    def __check_init__(self):
        _check_reduction(self.reduction)

    def per_sample(self, pred, target):
        _check_pair(pred, target, "MSE")
        return jnp.mean((pred - target) ** 2)


def _gradients(u, lengths, periodic):
    """Finite-difference partial derivatives of `u` along its trailing `len(lengths)`
    axes: second-order central differences (wrapping around when periodic; numpy's
    `gradient` with one-sided first-order ends otherwise)."""
    nd = len(lengths)
    out = []
    for i, length in enumerate(lengths):
        axis = u.ndim - nd + i
        n = u.shape[axis]
        if periodic:
            h = length / n
            out.append((jnp.roll(u, -1, axis) - jnp.roll(u, 1, axis)) / (2 * h))
        else:
            h = length / (n - 1)
            out.append(jnp.gradient(u, h, axis=axis))
    return out


class RelativeH1(AbstractLoss):
    """Relative H1 error per sample:
    $\\sqrt{\\|e\\|^2 + \\sum_d \\|\\partial_d e\\|^2} / \\sqrt{\\|v\\|^2 + \\sum_d \\|\\partial_d v\\|^2}$
    with $e = u - v$, derivatives by finite differences on the grid (central,
    second order; periodic by default), norms over all channels and grid points.

    Compare `neuralop.losses.H1Loss` (which, like this class, uses the grid spacing
    of a box of side `domain`).

    **Arguments:**

    - `domain`: the side length of the box, one float for every spatial axis or one
        per axis (default 1). Its length also fixes how many trailing axes are
        spatial when given as a sequence; with a float, every axis after the channel
        axis is spatial (pass a sequence for `(channels, T, *spatial)` data).
    - `periodic`: periodic grid (spacing `L/n`, central differences that wrap) or
        not (nodes include both ends, spacing `L/(n-1)`, one-sided at the ends).
    - `reduction`: `"mean"` (default) or `"sum"` over the batch.
    - `eps`: added to the denominator (0 by default).
    """

    domain: float | tuple[float, ...] = 1.0
    periodic: bool = True
    reduction: Literal["mean", "sum"] = "mean"
    eps: float = 0.0

    def __check_init__(self):
        _check_reduction(self.reduction)

    def _lengths(self, ndim):
        if isinstance(self.domain, Sequence):
            lengths = tuple(float(x) for x in self.domain)
            if len(lengths) > ndim - 1:
                raise ValueError(
                    f"RelativeH1 was given {len(lengths)} domain lengths but a sample has "
                    f"only {ndim - 1} axes after the channel axis."
                )
            return lengths
        if ndim < 2:
            raise ValueError("RelativeH1 needs a sample `(channels, *spatial)` with at least one spatial axis.")
        return (float(self.domain),) * (ndim - 1)

    def per_sample(self, pred, target):
        _check_pair(pred, target, "RelativeH1")
        lengths = self._lengths(jnp.ndim(target))
        err = pred - target

        def sq_norm(u):
            return jnp.sum(u**2) + sum(jnp.sum(g**2) for g in _gradients(u, lengths, self.periodic))

        return jnp.sqrt(sq_norm(err)) / (jnp.sqrt(sq_norm(target)) + self.eps)


def nrmse(
    pred: Float[Array, " c T *spatial"], target: Float[Array, " c T *spatial"], *, time_axis: int = 1
) -> Float[Array, " T"]:
    """Normalised RMSE of one trajectory at every time: $\\|u_t - v_t\\|_2 / \\|v_t\\|_2$
    over channels and grid points (the PDEBench metric, before averaging).

    **Arguments:**

    - `pred`, `target`: one trajectory each, the time axis at `time_axis`
        (1: `(channels, T, *spatial)`, the `jaxnum.data` layout).

    **Returns:** an array `(T,)`. Differentiable (plain autodiff).
    """
    _check_pair(pred, target, "nrmse")
    p = jnp.moveaxis(pred, time_axis, 0)
    t = jnp.moveaxis(target, time_axis, 0)
    T = p.shape[0]
    num = jnp.linalg.norm(jnp.reshape(p - t, (T, -1)), axis=1)
    den = jnp.linalg.norm(jnp.reshape(t, (T, -1)), axis=1)
    return num / den
