"""What a training step minimises: supervised operator learning, or one-step models
trained for autoregressive rollouts (teacher forcing, CAPE curriculum, pushforward).

An objective is a strategy object passed to `Trainer(objective=...)`. It sees the
model in physical units (normalisers already applied), one batch of numpy arrays
`{"inputs", "outputs"[, "params"]}`, the loss, a PRNG key and the training progress
(fraction of epochs done, a traced scalar: no recompilation as it changes).
"""

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._losses import AbstractLoss, RelativeLp, nrmse
from ._normalise import ChannelNormaliser
from ._rollout import (
    TanhCurriculum,
    _call,
    pushforward_loss,
    rollout_error,
    unrolled_losses,
    unrolled_predictions,
)


def _vmap_call(fn, *args, params):
    if params is None:
        return jax.vmap(lambda *a: fn(*a, None))(*args)
    return jax.vmap(fn)(*args, params)


class AbstractObjective(eqx.Module):
    """A training objective (see the module docstring)."""

    @abc.abstractmethod
    def loss(self, model, batch: dict, loss: AbstractLoss, key, progress) -> Float[Array, ""]:
        """The scalar minimised on one batch."""

    @abc.abstractmethod
    def metrics(self, model, batch: dict, loss: AbstractLoss) -> dict[str, Float[Array, " B"]]:
        """Per-sample evaluation metrics of one batch."""

    @abc.abstractmethod
    def expected_output(self, data) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """`(model input shape, model output shape)` of one sample of `data`."""

    @abc.abstractmethod
    def fit_normalisers(self, data) -> tuple[ChannelNormaliser, ChannelNormaliser]:
        """Input and output normalisers fitted on the training data."""

    def schedule(self, progress: float) -> dict[str, float]:
        """Scalars worth recording in the history at this stage of training."""
        del progress
        return {}


class Supervised(AbstractObjective):
    """Operator learning from pairs: `model(inputs[i]) ~ outputs[i]`, the loss taken
    over the batch (`Trainer(loss=...)`, relative L2 by default).

    Metrics: `loss` (the training loss) and `rel_l2` per sample.
    """

    def loss(self, model, batch, loss, key, progress):
        del key, progress
        preds = _vmap_call(lambda x, p: _call(model, x, p), batch["inputs"], params=batch.get("params"))
        return loss(preds, batch["outputs"])

    def metrics(self, model, batch, loss):
        preds = _vmap_call(lambda x, p: _call(model, x, p), batch["inputs"], params=batch.get("params"))
        rel = RelativeLp(2.0)
        return {
            "loss": jax.vmap(loss.per_sample)(preds, batch["outputs"]),
            "rel_l2": jax.vmap(rel.per_sample)(preds, batch["outputs"]),
        }

    def expected_output(self, data):
        return tuple(data.inputs.shape[1:]), tuple(data.outputs.shape[1:])

    def fit_normalisers(self, data):
        return ChannelNormaliser.fit(data.inputs), ChannelNormaliser.fit(data.outputs)


class Autoregressive(AbstractObjective):
    """A one-step model `u_t -> u_{t+1}` trained on trajectories `(channels, T,
    *grid)` (see `initial`) for autoregressive rollouts.

    Three regimes:

    - neither `curriculum` nor `pushforward`: teacher forcing (every step fed the
        true state), the loss averaged over the `T - 1` steps;
    - `curriculum=TanhCurriculum(...)`: the CAPE curriculum; at training progress
        $\\pi$ the first $\\lceil r(\\pi)(T-1) \\rceil$ steps are teacher-forced and the
        rest fed the model's own predictions (gradients through them unless
        `stop_gradient_feedback`), so training ends fully autoregressive;
    - `pushforward=k`: the pushforward trick, up to `k` unrolled steps without
        gradients before the differentiated one.

    How the loss (`Trainer(loss=...)`) is taken over a trajectory (`loss_over`):

    - `"steps"` (default): on every predicted state separately, averaged over the
        `T - 1` steps. With a relative loss every state weighs the same, however
        small it is: the late, strongly decayed states of a diffusive trajectory
        (where a tiny absolute error is a large relative one) can dominate.
    - `"trajectory"`: once on the whole predicted trajectory `(c, T - 1, *grid)`
        against the truth. With `RelativeLp` this is the relative error of the
        whole trajectory, $\\|\\hat u_{1..T-1} - u_{1..T-1}\\| / \\|u_{1..T-1}\\|$:
        each step weighs by its absolute error, normalised once per trajectory, so
        decayed states count by their size and trajectories of different
        amplitude still weigh alike.

    Metrics: `nrmse` (rollout nRMSE from the initial state, averaged over time),
    `nrmse_final` (at the last time).

    **Arguments:**

    - `curriculum`: a `TanhCurriculum`, or `None`.
    - `pushforward`: maximum unrolled steps (0: off).
    - `stop_gradient_feedback`: cut gradients through fed-back predictions.
    - `loss_over`: `"steps"` or `"trajectory"` (above); the pushforward trick
        differentiates one step and takes `"steps"` only.
    - `initial`: `"inputs"` (default, the `jaxnum.data` layout: `outputs` holds the
        states at the save times $t_1..t_T$ and `inputs[i]` is the initial state,
        prepended to the trajectory) or `"outputs"` (the trajectory `outputs[i]`
        already starts with the initial state; `inputs` is not used).
    """

    curriculum: TanhCurriculum | None = None
    pushforward: int = 0
    stop_gradient_feedback: bool = False
    initial: Literal["outputs", "inputs"] = "inputs"
    loss_over: Literal["steps", "trajectory"] = "steps"

    def __check_init__(self):
        if self.loss_over not in ("steps", "trajectory"):
            raise ValueError(f"`loss_over` must be 'steps' or 'trajectory'; got {self.loss_over!r}.")
        if self.pushforward and self.loss_over != "steps":
            raise ValueError(
                "The pushforward trick differentiates a single step: use loss_over='steps' with it."
            )
        if self.pushforward < 0:
            raise ValueError(f"`pushforward` must be >= 0; got {self.pushforward}.")
        if self.pushforward and self.curriculum is not None:
            raise ValueError("Choose the curriculum or the pushforward trick, not both.")
        if self.initial not in ("outputs", "inputs"):
            raise ValueError(f"`initial` must be 'outputs' or 'inputs'; got {self.initial!r}.")

    def _trajectory(self, batch):
        traj = batch["outputs"]
        if self.initial == "inputs":
            traj = jnp.concatenate([batch["inputs"][:, :, None], traj], axis=2)
        return traj

    def loss(self, model, batch, loss, key, progress):
        traj = self._trajectory(batch)
        params = batch.get("params")
        if self.pushforward:
            keys = jax.random.split(key, traj.shape[0])

            def one(u, k, p):
                return pushforward_loss(model, u, k, self.pushforward, loss.per_sample, params=p)

            values = _vmap_call(one, traj, keys, params=params)
        else:
            steps = traj.shape[2] - 1
            if self.curriculum is None:
                teacher = steps
            else:
                teacher = self.curriculum.teacher_steps(progress, steps)

            def one(u, p):
                if self.loss_over == "trajectory":
                    preds = unrolled_predictions(
                        model, u, teacher, params=p, stop_gradient_feedback=self.stop_gradient_feedback
                    )
                    return loss.per_sample(preds, u[:, 1:])
                return jnp.mean(
                    unrolled_losses(
                        model, u, teacher, loss.per_sample, params=p,
                        stop_gradient_feedback=self.stop_gradient_feedback,
                    )
                )

            values = _vmap_call(one, traj, params=params)
        return jnp.mean(values) if loss.reduction == "mean" else jnp.sum(values)

    def metrics(self, model, batch, loss):
        del loss
        traj = self._trajectory(batch)
        errs = _vmap_call(lambda u, p: rollout_error(model, u, nrmse, params=p), traj, params=batch.get("params"))
        return {"nrmse": jnp.mean(errs, axis=1), "nrmse_final": errs[:, -1]}

    def expected_output(self, data):
        out = tuple(data.outputs.shape[1:])
        if len(out) < 2:
            raise ValueError(
                f"Autoregressive training needs trajectories `outputs` (N, channels, T, *grid); "
                f"got outputs of shape {(len(data),) + out}."
            )
        state = (out[0],) + out[2:]
        if self.initial == "inputs" and tuple(data.inputs.shape[1:]) != state:
            raise ValueError(
                f"initial='inputs' needs inputs shaped like one state {state}; got "
                f"{tuple(data.inputs.shape[1:])}."
            )
        if out[1] < 2 and self.initial == "outputs":
            raise ValueError(f"Trajectories need at least 2 time steps; got T={out[1]}.")
        return state, state

    def fit_normalisers(self, data):
        norm = ChannelNormaliser.fit(data.outputs)
        return norm, norm

    def schedule(self, progress):
        if self.curriculum is None:
            return {}
        return {"teacher_forcing": float(self.curriculum(progress))}


def example_batch(data, size: int = 1) -> dict[str, np.ndarray]:
    idx = np.arange(min(size, len(data)))
    out = {"inputs": np.asarray(data.inputs[idx]), "outputs": np.asarray(data.outputs[idx])}
    if getattr(data, "params", None) is not None:
        out["params"] = np.asarray(data.params[idx])
    return out
