"""An exponential moving average of the parameters, kept in the optimiser state."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree


class ParameterEMAState(NamedTuple):
    """State of `parameter_ema`: the wrapped optimiser's state and the average."""

    inner: optax.OptState
    average: PyTree[Array]


def _check_decay(decay) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= float(decay) < 1.0:
        raise ValueError(
            f"The EMA `decay` must be a float in [0, 1) (e.g. 0.999: an average over about "
            f"1 / (1 - decay) = 1000 steps); got {decay!r}."
        )
    return float(decay)


def parameter_ema(optimiser: optax.GradientTransformation, decay: float) -> optax.GradientTransformationExtraArgs:
    r"""Wraps `optimiser` so that its state also tracks an exponential moving average
    of the parameters, $\bar\theta_{k+1} = d\,\bar\theta_k + (1 - d)\,\theta_{k+1}$,
    started at the initial parameters ($\bar\theta_0 = \theta_0$), no bias correction.

    The updates are those of `optimiser`, unchanged: only evaluation uses the
    average (`ema_parameters(opt_state)`). Because the average lives in the
    optimiser state it is checkpointed, resumed and replicated with it. This is the
    recurrence of `torch.optim.swa_utils.AveragedModel(model,
    multi_avg_fn=get_ema_multi_avg_fn(d))` once its first `update_parameters` call
    has copied the initial parameters.

    **Arguments:**

    - `optimiser`: any optax gradient transformation (schedules included).
    - `decay`: $d \in [0, 1)$; the average spans about $1/(1-d)$ steps (0 keeps the
        latest parameters).

    **Returns:** an optax `GradientTransformationExtraArgs`; its `update` needs
    `params` (the parameters *before* the update).

    **Gradients:** the average is not differentiated through (it is state).
    """
    decay = _check_decay(decay)
    inner = optax.with_extra_args_support(optimiser)

    def init_fn(params):
        average = jax.tree_util.tree_map(lambda p: jnp.array(p, copy=True), params)
        return ParameterEMAState(inner.init(params), average)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("parameter_ema needs the parameters: call `update(grads, state, params)`.")
        updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
        new_params = optax.apply_updates(params, updates)
        average = jax.tree_util.tree_map(
            lambda a, p: (decay * a + (1.0 - decay) * p).astype(a.dtype), state.average, new_params
        )
        return updates, ParameterEMAState(inner_state, average)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_parameters(opt_state) -> PyTree[Array] | None:
    """The averaged parameters held in an optimiser state built by `parameter_ema`
    (searched through nested states, e.g. under `optax.chain`), or `None` if there
    is no such state.

    **Returns:** a PyTree shaped like the parameters.
    """
    found = []

    def visit(node):
        if isinstance(node, ParameterEMAState):
            found.append(node.average)
            return True
        return False

    jax.tree_util.tree_map(lambda _: None, opt_state, is_leaf=visit)
    return found[0] if found else None
