"""Autoregressive rollouts of one-step models, the CAPE teacher-forcing curriculum and
the pushforward trick.

A *one-step model* maps the state at time $t$, `(channels, *grid)`, to the state at
$t + \\Delta t$ (parameter-conditioned models also take the PDE's scalar parameters:
`model(u, p)`). A trajectory is laid out `(channels, T, *grid)`, the `jaxnum.data`
layout, with the initial state at index 0.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray


def _call(model, u, params):
    return model(u) if params is None else model(u, params)


def freeze(model):
    """`model` with `lax.stop_gradient` on every array: its output carries no
    gradient back to the parameters."""
    return jtu.tree_map(lambda x: lax.stop_gradient(x) if eqx.is_array(x) else x, model)


def rollout(model, u0: Float[Array, " c *grid"], num_steps: int, *, params=None) -> Float[Array, " c num_steps *grid"]:
    """Applies the one-step `model` `num_steps` times from `u0`, feeding each
    prediction back as the next input (`lax.scan`: one compiled step).

    **Arguments:**

    - `model`: `u -> u_next` (or `(u, params) -> u_next`), one unbatched sample.
    - `u0`: the initial state `(channels, *grid)`.
    - `num_steps`: how many steps (a Python int).
    - `params`: the PDE's scalar parameters, passed to the model when given.

    **Returns:** the predicted states $u_1 \\dots u_{num\\_steps}$ stacked on axis 1,
    `(channels, num_steps, *grid)`. Gradients flow through the whole rollout
    (backpropagation through time; wrap in `jax.checkpoint` to trade memory).
    """

    def body(u, _):
        nxt = _call(model, u, params)
        if nxt.shape != u.shape:
            raise ValueError(
                f"A one-step model must return a state shaped like its input {u.shape}; "
                f"got {nxt.shape}. Set the model's out_channels to its in_channels."
            )
        return nxt, nxt

    _, states = lax.scan(body, u0, None, length=num_steps)
    return jnp.moveaxis(states, 0, 1)


class TanhCurriculum(eqx.Module):
    """The CAPE curriculum (Takamoto, Alesiani and Niepert 2023): training moves from
    teacher forcing (every step fed the true state) to fully autoregressive rollouts
    (every step fed the model's previous prediction) along a tanh schedule.

    `curriculum(progress)` is the fraction of the trajectory's steps that are
    teacher-forced, `progress` being the fraction of training done (epoch `e` of `E`:
    `e / (E - 1)`). It is exactly 1 up to `start`, exactly 0 from `end` on, and in
    between, with $s = (\\text{progress} - \\text{start}) / (\\text{end} - \\text{start})$,

    $$r(s) = \\frac{\\tanh(k (1 - 2 s)) + \\tanh k}{2 \\tanh k},$$

    a tanh step centred half-way, rescaled so that both ends are exact. The first
    $\\lceil r (T - 1) \\rceil$ steps of a trajectory are teacher-forced, the rest
    autoregressive. (The paper gives the tanh shape of the transition; `start`,
    `end` and `sharpness` are this implementation's parameters.)

    **Arguments:**

    - `start`, `end`: fractions of training where the transition begins and ends
        (`0 <= start < end <= 1`).
    - `sharpness`: $k > 0$; larger is a steeper step.
    """

    start: float = 0.0
    end: float = 1.0
    sharpness: float = 3.0

    def __check_init__(self):
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"TanhCurriculum needs 0 <= start < end <= 1; got start={self.start}, end={self.end}.")
        if not self.sharpness > 0:
            raise ValueError(f"TanhCurriculum needs sharpness > 0; got {self.sharpness}.")

    def __call__(self, progress: Float[Array, ""] | float) -> Float[Array, ""]:
        s = jnp.clip((jnp.asarray(progress, float) - self.start) / (self.end - self.start), 0.0, 1.0)
        k = self.sharpness
        tk = jnp.tanh(k)
        return jnp.clip((jnp.tanh(k * (1 - 2 * s)) + tk) / (2 * tk), 0.0, 1.0)

    def teacher_steps(self, progress, num_steps: int) -> Int[Array, ""]:
        """How many of `num_steps` steps are teacher-forced at `progress`."""
        return jnp.ceil(self(progress) * num_steps - 1e-9).astype(jnp.int32)


def unrolled_predictions(
    model,
    trajectory: Float[Array, " c T *grid"],
    teacher_steps: Int[Array, ""] | int,
    *,
    params=None,
    stop_gradient_feedback: bool = False,
) -> Float[Array, " c T-1 *grid"]:
    """The model's prediction of every later state of a trajectory, the first
    `teacher_steps` steps fed the true state (teacher forcing) and the rest fed the
    model's own previous prediction (autoregressive).

    `teacher_steps = T - 1` is one-step training; `0` (or `1`: step 0 is always fed
    the true initial state) is a full rollout from the initial state. With
    `stop_gradient_feedback`, gradients do not flow through the fed-back predictions
    (each prediction differentiates one model application, as in the pushforward
    trick); otherwise they do (backpropagation through time).

    **Returns:** the predicted states $u_1 \\dots u_{T-1}$ stacked on axis 1,
    `(channels, T - 1, *grid)`, like `trajectory[:, 1:]`.
    """
    truth = jnp.moveaxis(trajectory, 1, 0)  # (T, c, *grid)

    def body(prev, inputs):
        t, u_true = inputs
        u = jnp.where(t < teacher_steps, u_true, prev)
        pred = _call(model, u, params)
        if pred.shape != u.shape:
            raise ValueError(
                f"A one-step model must return a state shaped like its input {u.shape}; "
                f"got {pred.shape}. Set the model's out_channels to its in_channels."
            )
        feed = lax.stop_gradient(pred) if stop_gradient_feedback else pred
        return feed, pred

    steps = jnp.arange(truth.shape[0] - 1)
    _, preds = lax.scan(body, truth[0], (steps, truth[:-1]))
    return jnp.moveaxis(preds, 0, 1)


def unrolled_losses(
    model,
    trajectory: Float[Array, " c T *grid"],
    teacher_steps: Int[Array, ""] | int,
    per_sample_loss,
    *,
    params=None,
    stop_gradient_feedback: bool = False,
) -> Float[Array, " T-1"]:
    """The loss of every step of a trajectory predicted by `unrolled_predictions`
    (same arguments; `per_sample_loss(pred, truth)` on one state `(c, *grid)`).

    **Returns:** `(T - 1,)` losses, step $t$ comparing the prediction of state
    $t + 1$ with the truth.
    """
    preds = unrolled_predictions(
        model, trajectory, teacher_steps, params=params, stop_gradient_feedback=stop_gradient_feedback
    )
    return jax.vmap(per_sample_loss, in_axes=(1, 1))(preds, trajectory[:, 1:])


def pushforward_loss(
    model,
    trajectory: Float[Array, " c T *grid"],
    key: PRNGKeyArray,
    max_unroll: int,
    per_sample_loss,
    *,
    params=None,
) -> Float[Array, ""]:
    """The pushforward trick (Brandstetter, Worrall and Welling 2022, "Message Passing
    Neural PDE Solvers"): from a random start time, roll the model forward a random
    number $k \\in \\{0..\\text{max\\_unroll}\\}$ of steps *without* gradients, then take
    one step with gradients and compare with the true state there. The model learns
    to correct the distribution shift of its own rollouts at the cost of one
    differentiated step.

    **Returns:** the loss of one sample (gradients through the last step only).
    """
    T = trajectory.shape[1]
    if T - 1 <= max_unroll:
        raise ValueError(
            f"The pushforward trick with max_unroll={max_unroll} needs trajectories of more "
            f"than {max_unroll + 1} states; got T={T}. Lower `pushforward`."
        )
    kk, kt = jr.split(key)
    k = jr.randint(kk, (), 0, max_unroll + 1)
    t0 = jr.randint(kt, (), 0, T - 1 - k)
    frozen = freeze(model)
    u = lax.dynamic_index_in_dim(trajectory, t0, axis=1, keepdims=False)
    u = lax.stop_gradient(lax.fori_loop(0, k, lambda _, v: _call(frozen, v, params), u))
    pred = _call(model, u, params)
    target = lax.dynamic_index_in_dim(trajectory, t0 + k + 1, axis=1, keepdims=False)
    return per_sample_loss(pred, target)


def rollout_error(model, trajectory, metric, *, params=None) -> Float[Array, " T-1"]:
    """`metric(prediction, truth)` of a full rollout from the trajectory's initial
    state, at every later time (`metric` works on `(c, T-1, *grid)`, e.g.
    `jaxnum.train.nrmse`)."""
    preds = rollout(model, trajectory[:, 0], trajectory.shape[1] - 1, params=params)
    return metric(preds, trajectory[:, 1:])

