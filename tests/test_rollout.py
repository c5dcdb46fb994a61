"""Tests of the rollout objectives of jaxnum.train: unrolled predictions under the
curriculum, and the loss taken over whole trajectories (`loss_over="trajectory"`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxnum.train as jt
from jaxnum.train._rollout import unrolled_predictions

from .helpers import finite_difference_jvp


class Stencil(eqx.Module):
    """u -> periodic 3-point stencil of u (a linear one-step model with a known matrix)."""

    w: jax.Array

    def __init__(self, w=(0.0, 1.0, 0.0)):
        self.w = jnp.asarray(w, float)

    def __call__(self, u, p=None):
        del p
        return self.w[0] * jnp.roll(u, 1, -1) + self.w[1] * u + self.w[2] * jnp.roll(u, -1, -1)

    def matrix(self, n):
        w = np.asarray(self.w)
        return w[1] * np.eye(n) + w[0] * np.roll(np.eye(n), -1, 1) + w[2] * np.roll(np.eye(n), 1, 1)


def _heat(rng, num, n, T, nu=0.2):
    """Exact heat-semigroup trajectories `(num, 1, T, n)` of the stencil (0.2, 0.6, 0.2)
    (a decaying, diffusive family: late states are small)."""
    A = Stencil((nu, 1 - 2 * nu, nu)).matrix(n)
    u = rng.standard_normal((num, n))
    states = [u]
    for _ in range(T - 1):
        states.append(states[-1] @ A.T)
    return np.stack(states, axis=1)[:, None]


def test_unrolled_predictions_match_matrix_powers():
    rng = np.random.default_rng(0)
    n, T = 12, 6
    model = Stencil((0.25, 0.45, 0.3))
    A = model.matrix(n)
    traj = jnp.asarray(_heat(rng, 1, n, T)[0])  # (1, T, n)
    truth = np.asarray(traj[0])
    for teacher in (0, 1, 3, T - 1):
        preds = np.asarray(jax.jit(unrolled_predictions)(model, traj, teacher))
        assert preds.shape == (1, T - 1, n)
        ref, prev = [], truth[0]
        for t in range(T - 1):
            u = truth[t] if t < teacher else prev
            prev = A @ u
            ref.append(prev)
        np.testing.assert_allclose(preds[0], np.stack(ref), rtol=1e-12, atol=1e-14)
    # teacher_steps 0 and 1 are both a free rollout from u0 (= jt.rollout)
    free = jt.rollout(model, traj[:, 0], T - 1)
    np.testing.assert_allclose(unrolled_predictions(model, traj, 0), free, rtol=1e-13)
    # the per-step losses are the loss of these predictions, step by step
    mse = jt.MSE().per_sample
    preds = unrolled_predictions(model, traj, 2)
    np.testing.assert_allclose(
        jt.unrolled_losses(model, traj, 2, mse),
        [float(mse(preds[:, t], traj[:, t + 1])) for t in range(T - 1)],
        rtol=1e-13,
    )


def test_unrolled_predictions_reject_a_model_that_changes_the_state_shape():
    traj = jnp.zeros((1, 4, 8))
    with pytest.raises(ValueError, match="out_channels"):
        unrolled_predictions(lambda u: jnp.concatenate([u, u]), traj, 0)


def _batch(traj):
    return {"inputs": traj[:, :, 0], "outputs": traj}


def test_trajectory_loss_is_the_relative_error_of_the_whole_rollout():
    rng = np.random.default_rng(1)
    n, T = 16, 7
    traj = jnp.asarray(_heat(rng, 3, n, T, nu=0.25))
    model = Stencil((0.2, 0.55, 0.25))
    A = model.matrix(n)
    loss = jt.RelativeLp()
    cur = jt.TanhCurriculum()
    key = jr.PRNGKey(0)
    for progress, teacher in ((0.0, T - 1), (1.0, 0)):
        by_traj = jt.Autoregressive(curriculum=cur, initial="outputs", loss_over="trajectory")
        by_step = jt.Autoregressive(curriculum=cur, initial="outputs")
        got_traj = float(by_traj.loss(model, _batch(traj), loss, key, progress))
        got_step = float(by_step.loss(model, _batch(traj), loss, key, progress))
        ref_traj, ref_step = [], []
        for u in np.asarray(traj)[:, 0]:
            preds, prev = [], u[0]
            for t in range(T - 1):
                prev = A @ (u[t] if t < teacher else prev)
                preds.append(prev)
            preds = np.stack(preds)
            ref_traj.append(np.linalg.norm(preds - u[1:]) / np.linalg.norm(u[1:]))
            ref_step.append(np.mean(np.linalg.norm(preds - u[1:], axis=1) / np.linalg.norm(u[1:], axis=1)))
        np.testing.assert_allclose(got_traj, np.mean(ref_traj), rtol=1e-12)
        np.testing.assert_allclose(got_step, np.mean(ref_step), rtol=1e-12)


def test_trajectory_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    traj = jnp.asarray(_heat(rng, 2, 10, 5))
    obj = jt.Autoregressive(curriculum=jt.TanhCurriculum(), initial="outputs", loss_over="trajectory")
    loss = jt.RelativeLp()

    def f(w):
        return obj.loss(Stencil(w), _batch(traj), loss, jr.PRNGKey(0), 0.6)

    w = jnp.asarray([0.1, 0.7, 0.15])
    d = jnp.asarray([0.3, -0.2, 0.5])
    g = jax.grad(f)(w)
    np.testing.assert_allclose(jnp.dot(g, d), finite_difference_jvp(f, w, d), rtol=1e-7)
    # with stop_gradient_feedback the gradient differs (only the last application)
    cut = jt.Autoregressive(curriculum=jt.TanhCurriculum(), initial="outputs", loss_over="trajectory",
                            stop_gradient_feedback=True)
    g_cut = jax.grad(lambda w: cut.loss(Stencil(w), _batch(traj), loss, jr.PRNGKey(0), 1.0))(w)
    g_full = jax.grad(lambda w: obj.loss(Stencil(w), _batch(traj), loss, jr.PRNGKey(0), 1.0))(w)
    assert not np.allclose(g_cut, g_full)


def test_loss_over_is_validated():
    with pytest.raises(ValueError, match="'steps' or 'trajectory'"):
        jt.Autoregressive(loss_over="time")
    with pytest.raises(ValueError, match="loss_over='steps'"):
        jt.Autoregressive(pushforward=2, loss_over="trajectory")


def test_training_with_the_trajectory_loss_and_curriculum_learns_the_heat_step():
    rng = np.random.default_rng(3)
    traj = _heat(rng, 8, 16, 6)
    test = _heat(rng, 4, 24, 6)
    trainer = jt.Trainer(
        optax.adam(optax.cosine_decay_schedule(5e-2, 120)),
        objective=jt.Autoregressive(curriculum=jt.TanhCurriculum(), initial="outputs", loss_over="trajectory"),
        epochs=60, batch_size=4, normalise=False,
    )
    trained, history = trainer.fit(Stencil(), (traj[:, :, 0], traj), key=jr.PRNGKey(0),
                                   eval_data={"test": (test[:, :, 0], test)}, eval_every=60, progress=False)
    np.testing.assert_allclose(trained.w, [0.2, 0.6, 0.2], atol=0.01)
    assert history[-1]["eval"]["test"]["nrmse"] < 0.05
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
