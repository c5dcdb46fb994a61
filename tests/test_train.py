import inspect
import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxnum.train as jt
from jaxnum.train._data import epoch_permutation

from .helpers import finite_difference_jvp, tree_allclose

# --- small models (the trainer takes any Equinox model called on one sample) ---


class ConvNet(eqx.Module):
    """Two periodic 1-D convolutions: `(c_in, n) -> (c_out, n)`."""

    conv1: eqx.nn.Conv1d
    conv2: eqx.nn.Conv1d

    def __init__(self, cin, cout, key, width=8):
        k1, k2 = jr.split(key)
        self.conv1 = eqx.nn.Conv1d(cin, width, 3, padding="SAME", padding_mode="CIRCULAR", key=k1)
        self.conv2 = eqx.nn.Conv1d(width, cout, 3, padding="SAME", padding_mode="CIRCULAR", key=k2)

    def __call__(self, x):
        return self.conv2(jnp.tanh(self.conv1(x)))


class Stencil(eqx.Module):
    """A learnable 3-point periodic stencil `u -> w0 u_{i-1} + w1 u_i + w2 u_{i+1}`,
    optionally scaled by a scalar parameter (a stand-in for a CAPE model)."""

    w: jax.Array

    def __init__(self, w=(0.0, 1.0, 0.0)):
        self.w = jnp.asarray(w, float)

    def __call__(self, u, p=None):
        out = self.w[0] * jnp.roll(u, 1, -1) + self.w[1] * u + self.w[2] * jnp.roll(u, -1, -1)
        return out if p is None else out * (1 + p[0])


def _pairs(rng, n_samples=32, n=16):
    x = rng.standard_normal((n_samples, 1, n))
    y = 0.7 * np.roll(x, 1, -1) + 0.3 * x + 0.1
    return x, y


def _heat_trajectories(rng, n_samples=8, n=16, T=6, nu=0.2):
    """Trajectories of the explicit periodic heat step (exactly a 3-point stencil)."""
    u = rng.standard_normal((n_samples, 1, n))
    traj = [u]
    for _ in range(T - 1):
        u = u + nu * (np.roll(u, 1, -1) - 2 * u + np.roll(u, -1, -1))
        traj.append(u)
    return np.stack(traj, axis=2)  # (N, 1, T, n)


def _leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


# --- losses ---------------------------------------------------------------------


def test_relative_lp_and_mse_against_hand_computation():
    pred = np.array([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 1.0]]])
    target = np.array([[[1.0, 1.0, 1.0]], [[0.0, 2.0, 0.0]]])
    # Sample 0: ||(0,1,2)|| / ||(1,1,1)|| = sqrt(5/3); sample 1: ||(0,-2,1)|| / 2 = sqrt(5)/2.
    l2 = [np.sqrt(5 / 3), np.sqrt(5) / 2]
    l1 = [3 / 3, 3 / 2]
    np.testing.assert_allclose(jt.RelativeLp()(pred, target), np.mean(l2), rtol=1e-14)
    np.testing.assert_allclose(jt.RelativeLp(reduction="sum")(pred, target), np.sum(l2), rtol=1e-14)
    np.testing.assert_allclose(jt.RelativeLp(p=1)(pred, target), np.mean(l1), rtol=1e-14)
    np.testing.assert_allclose(jt.RelativeLp(p=3).per_sample(pred[0], target[0]), (9 / 3) ** (1 / 3), rtol=1e-14)
    np.testing.assert_allclose(jt.MSE()(pred, target), np.mean([5 / 3, 5 / 3]), rtol=1e-14)
    # Batched call equals vmap of per_sample, also under jit.
    per = jax.jit(jax.vmap(jt.RelativeLp().per_sample))(pred, target)
    np.testing.assert_allclose(per, l2, rtol=1e-14)
    with pytest.raises(ValueError, match="out_channels"):
        jt.RelativeLp()(pred, target[:, :, :2])
    with pytest.raises(ValueError, match="reduction"):
        jt.RelativeLp(reduction="median")


def test_relative_h1_periodic_against_analytic_discrete_value():
    n = 64
    x = np.arange(n) / n
    target = np.sin(2 * np.pi * 3 * x)[None]
    err = 0.2 * np.sin(2 * np.pi * 5 * x)[None]
    h = 1 / n

    def d(k):  # the central difference of sin(2 pi k x) has amplitude sin(2 pi k h) / h
        return np.sin(2 * np.pi * k * h) / h

    expected = 0.2 * np.sqrt((1 + d(5) ** 2) / (1 + d(3) ** 2))
    got = jt.RelativeH1().per_sample(jnp.asarray(target + err), jnp.asarray(target))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Scaling the prediction: relative error exactly 0.5.
    np.testing.assert_allclose(jt.RelativeH1().per_sample(0.5 * target, target), 0.5, rtol=1e-13)


def test_relative_h1_nonperiodic_2d_against_numpy_gradient():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((2, 2, 2, 9, 7))
    loss = jt.RelativeH1(domain=(2.0, 3.0), periodic=False)

    def ref(p, t):
        def sq(u):
            gx = np.gradient(u, 2.0 / 8, axis=1)
            gy = np.gradient(u, 3.0 / 6, axis=2)
            return np.sum(u**2) + np.sum(gx**2) + np.sum(gy**2)

        return np.sqrt(sq(p - t) / sq(t))

    np.testing.assert_allclose(loss(pred, target), np.mean([ref(p, t) for p, t in zip(pred, target)]), rtol=1e-12)


def test_loss_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    pred, target, tangent = (jnp.asarray(a) for a in rng.standard_normal((3, 3, 2, 12)))
    for loss in (jt.RelativeLp(), jt.RelativeLp(p=1.5), jt.RelativeH1()):
        fn = lambda p, loss=loss: loss(p, target)
        jvp = jax.jvp(fn, (pred,), (tangent,))[1]
        fd = finite_difference_jvp(fn, pred, tangent)
        np.testing.assert_allclose(jvp, fd, rtol=1e-6)


def test_nrmse_per_time():
    rng = np.random.default_rng(2)
    pred, target = rng.standard_normal((2, 3, 5, 8))  # (c, T, n)
    ref = [np.linalg.norm(pred[:, t] - target[:, t]) / np.linalg.norm(target[:, t]) for t in range(5)]
    np.testing.assert_allclose(jt.nrmse(pred, target), ref, rtol=1e-13)


# --- normalisers ----------------------------------------------------------------


def test_channel_normaliser_statistics_streamed_and_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((11, 3, 5, 6)) * np.array([1.0, 10.0, 0.1])[None, :, None, None]
    data += np.array([1e4, -2.0, 0.5])[None, :, None, None]  # a large mean: shifted sums keep the std
    norm = jt.ChannelNormaliser.fit(data, chunk_size=4)
    np.testing.assert_allclose(norm.mean, data.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(norm.std, data.std(axis=(0, 2, 3)), rtol=1e-9)
    # Same from an h5py dataset.
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["x"] = data
    with h5py.File(path, "r") as f:
        norm_h5 = jt.ChannelNormaliser.fit(f["x"], chunk_size=3)
    np.testing.assert_allclose(norm_h5.mean, norm.mean, rtol=1e-13)
    np.testing.assert_allclose(norm_h5.std, norm.std, rtol=1e-12)
    z = norm.encode(jnp.asarray(data[0]))
    np.testing.assert_allclose(z.mean(axis=(1, 2)), ((data[0] - norm.mean[:, None, None]) / (norm.std[:, None, None] + 1e-6)).mean(axis=(1, 2)))
    np.testing.assert_allclose(norm.decode(z), data[0], rtol=1e-12)
    # Constants: no gradient reaches the statistics.
    g = jax.grad(lambda nm: jnp.sum(nm.encode(jnp.asarray(data[0]))))(norm)
    assert float(jnp.abs(g.mean).max()) == 0.0 and float(jnp.abs(g.std).max()) == 0.0
    with pytest.raises(ValueError, match="channels"):
        norm.encode(jnp.zeros((2, 5)))


def test_channel_normaliser_is_resolution_independent():
    # A smooth two-channel field at two resolutions: the statistics agree, and the
    # normaliser fitted at one resolution acts pointwise at another.
    def field(n):
        x = np.arange(n) / n
        X, Y = np.meshgrid(x, x, indexing="ij")
        u = np.stack([np.sin(2 * np.pi * X) * np.cos(2 * np.pi * Y) + 2.0, 3 * np.cos(2 * np.pi * (X + Y))])
        return u[None]

    coarse, fine = jt.ChannelNormaliser.fit(field(32)), jt.ChannelNormaliser.fit(field(128))
    np.testing.assert_allclose(coarse.mean, fine.mean, atol=1e-12)
    np.testing.assert_allclose(coarse.std, fine.std, rtol=1e-12)
    enc_fine = coarse.encode(jnp.asarray(field(128)[0]))
    np.testing.assert_allclose(enc_fine[:, ::4, ::4], coarse.encode(jnp.asarray(field(32)[0])), atol=1e-12)


# --- rollouts and curriculum ---------------------------------------------------------


def test_curriculum_schedule_endpoints_and_shape():
    cur = jt.TanhCurriculum()
    assert float(cur(0.0)) == 1.0 and float(cur(1.0)) == 0.0
    np.testing.assert_allclose(cur(0.5), 0.5, atol=1e-15)
    values = np.asarray(jax.vmap(cur)(jnp.linspace(0, 1, 21)))
    assert np.all(np.diff(values) < 0)
    np.testing.assert_allclose(values + values[::-1], 1.0, atol=1e-14)  # symmetric step
    late = jt.TanhCurriculum(start=0.2, end=0.6, sharpness=5.0)
    assert float(late(0.1)) == 1.0 and float(late(0.2)) == 1.0 and float(late(0.6)) == 0.0 and float(late(0.9)) == 0.0
    assert int(cur.teacher_steps(0.0, 9)) == 9 and int(cur.teacher_steps(1.0, 9)) == 0
    assert 0 < int(cur.teacher_steps(0.5, 9)) < 9
    with pytest.raises(ValueError, match="start < end"):
        jt.TanhCurriculum(start=0.5, end=0.5)


def test_rollout_matches_matrix_powers_and_unrolled_losses():
    rng = np.random.default_rng(4)
    model = Stencil((0.2, 0.5, 0.3))
    n = 10
    A = 0.5 * np.eye(n) + 0.2 * np.roll(np.eye(n), -1, 1) + 0.3 * np.roll(np.eye(n), 1, 1)
    u0 = rng.standard_normal((1, n))
    out = jax.jit(lambda m, u: jt.rollout(m, u, 4))(model, u0)
    ref = np.stack([np.linalg.matrix_power(A, k + 1) @ u0[0] for k in range(4)])
    np.testing.assert_allclose(out[0], ref, rtol=1e-12)

    traj = jnp.asarray(_heat_trajectories(rng, 1, n, T=5)[0])  # (1, 5, n)
    mse = jt.MSE().per_sample
    teacher = jt.unrolled_losses(model, traj, 4, mse)
    manual = [np.mean((A @ np.asarray(traj[0, t]) - np.asarray(traj[0, t + 1])) ** 2) for t in range(4)]
    np.testing.assert_allclose(teacher, manual, rtol=1e-12)
    free = jt.unrolled_losses(model, traj, 0, mse)
    manual = [np.mean((np.linalg.matrix_power(A, t + 1) @ np.asarray(traj[0, 0]) - np.asarray(traj[0, t + 1])) ** 2) for t in range(4)]
    np.testing.assert_allclose(free, manual, rtol=1e-12)
    mixed = jt.unrolled_losses(model, traj, 2, mse)
    np.testing.assert_allclose(mixed[:2], teacher[:2], rtol=1e-14)
    assert not np.allclose(mixed[2:], teacher[2:])


def test_stop_gradient_feedback_and_pushforward_gradients():
    # Scalar model u -> a u on trajectories of a known geometric sequence.
    class Scale(eqx.Module):
        a: jax.Array

        def __call__(self, u):
            return self.a * u

    traj = jnp.asarray((0.9 ** np.arange(6))[None, :, None] * np.ones((1, 6, 3)))
    mse = jt.MSE().per_sample
    a = 0.7
    # Free rollout: step t predicts a^(t+1) u0; with stop_gradient feedback only the
    # last multiplication is differentiated: d/da (a * stop(a^t) - 0.9^(t+1))^2.
    g_full = jax.grad(lambda m: jnp.mean(jt.unrolled_losses(m, traj, 0, mse)))(Scale(jnp.asarray(a))).a
    g_cut = jax.grad(lambda m: jnp.mean(jt.unrolled_losses(m, traj, 0, mse, stop_gradient_feedback=True)))(Scale(jnp.asarray(a))).a
    t = np.arange(5)
    r = a ** (t + 1) - 0.9 ** (t + 1)
    np.testing.assert_allclose(g_full, np.mean(2 * r * (t + 1) * a**t), rtol=1e-12)
    np.testing.assert_allclose(g_cut, np.mean(2 * r * a**t), rtol=1e-12)

    key = jr.PRNGKey(7)
    kk, kt = jr.split(key)
    k = int(jr.randint(kk, (), 0, 3))
    t0 = int(jr.randint(kt, (), 0, 5 - k))
    val, g = jax.value_and_grad(lambda m: jt.pushforward_loss(m, traj, key, 2, mse))(Scale(jnp.asarray(a)))
    pred = a ** (k + 1) * 0.9**t0
    target = 0.9 ** (t0 + k + 1)
    np.testing.assert_allclose(val, (pred - target) ** 2, rtol=1e-12)
    np.testing.assert_allclose(g.a, 2 * (pred - target) * a**k * 0.9**t0, rtol=1e-12)
    with pytest.raises(ValueError, match="pushforward"):
        jt.pushforward_loss(Scale(jnp.asarray(a)), traj, key, 5, mse)


# --- the trainer ---------------------------------------------------------------------


def test_trainer_equals_a_bare_optax_loop():
    rng = np.random.default_rng(5)
    x, y = _pairs(rng)
    model = ConvNet(1, 1, jr.PRNGKey(0))
    opt = optax.adam(1e-2)
    key = jr.PRNGKey(1)
    trained, history = jt.fit(model, (x, y), optimiser=opt, epochs=3, batch_size=8, key=key, normalise=False, progress=False)

    # The same thing by hand: the documented shuffle, relative L2, adam.
    data_key, _ = jr.split(key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            m = eqx.combine(p, static)
            return jt.RelativeLp()(jax.vmap(m)(xb), yb)

        value, g = jax.value_and_grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, value

    losses = []
    for epoch in range(3):
        perm = epoch_permutation(data_key, epoch, len(x))
        epoch_losses = []
        for b in range(4):
            idx = np.sort(perm[8 * b : 8 * b + 8])
            params, state, value = step(params, state, x[idx], y[idx])
            epoch_losses.append(float(value))
        losses.append(np.mean(epoch_losses))
    assert tree_allclose(eqx.filter(trained, eqx.is_array), params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose([h["train_loss"] for h in history], losses, rtol=1e-12)
    assert losses[-1] < losses[0]


def test_fit_normalises_evaluates_at_two_resolutions_and_writes_history(tmp_path):
    rng = np.random.default_rng(6)
    x, y = _pairs(rng, 32, 16)
    x2, y2 = _pairs(rng, 6, 32)
    path = tmp_path / "hist.json"
    trained, history = jt.fit(
        ConvNet(1, 1, jr.PRNGKey(2)), (x, y), optimiser=optax.adam(1e-2), epochs=4, batch_size=8,
        key=jr.PRNGKey(3), eval_data={16: (x[:5], y[:5]), 32: (x2, y2)}, eval_every=2,
        metrics_path=path, progress=True,
    )
    assert isinstance(trained, jt.NormalisedModel)
    np.testing.assert_allclose(trained.input.mean, x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(trained.output.std, y.std(axis=(0, 2)), rtol=1e-12)
    assert [("eval" in h) for h in history] == [False, True, False, True]
    assert set(history[-1]["eval"]) == {"16", "32"}
    # The recorded metric is the mean relative L2 of the returned model.
    pred = jax.vmap(trained)(jnp.asarray(x2))
    ref = np.mean([np.linalg.norm(p - t) / np.linalg.norm(t) for p, t in zip(np.asarray(pred), y2)])
    np.testing.assert_allclose(history[-1]["eval"]["32"]["rel_l2"], ref, rtol=1e-10)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["samples_per_s"] > 0 for h in history)
    assert json.loads(path.read_text()) == json.loads(json.dumps(history))


class _Interrupt(Exception):
    pass


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(7)
    x, y = _pairs(rng, 24, 16)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(1e-2, 12)))
    trainer = jt.Trainer(opt, epochs=4, batch_size=8)
    model = ConvNet(1, 1, jr.PRNGKey(4))
    key = jr.PRNGKey(5)
    ref, ref_hist = trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path / "ref", progress=False)

    def crash(record, model):
        if record["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path / "run", callbacks=[crash], progress=False)
    meta = json.loads((tmp_path / "run" / "latest.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["step"]) == (2, 0, 6)
    resumed, hist = trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path / "run", progress=False)
    assert _same(resumed, ref)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".tmp")]
    assert len(list((tmp_path / "run").glob("state-*.eqx"))) == 2  # the newest two kept
    # A finished run resumed again does no work and returns the same model.
    again, hist2 = trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path / "run", progress=False)
    assert _same(again, ref) and len(hist2) == 4


def test_resume_from_mid_epoch_checkpoint(tmp_path):
    rng = np.random.default_rng(8)
    x, y = _pairs(rng, 24, 16)
    trainer = jt.Trainer(optax.adam(1e-2), epochs=2, batch_size=8)
    model = ConvNet(1, 1, jr.PRNGKey(6))
    key = jr.PRNGKey(7)
    ref, ref_hist = trainer.fit(model, (x, y), key=key, progress=False)

    class Kill(Exception):
        pass

    # Interrupt right after the mid-epoch checkpoint at step 4 (epoch 2, batch 1).
    real_save = jt._trainer.save_checkpoint

    def save_then_die(directory, tree, meta, **kw):
        real_save(directory, tree, meta, **kw)
        if meta["step"] == 4:
            raise Kill

    jt._trainer.save_checkpoint = save_then_die
    try:
        with pytest.raises(Kill):
            trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path, checkpoint_every_steps=2, progress=False)
    finally:
        jt._trainer.save_checkpoint = real_save
    meta = json.loads((tmp_path / "latest.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 1, 4)
    resumed, hist = trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path, checkpoint_every_steps=2, progress=False)
    assert _same(resumed, ref)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]


def test_checkpoint_errors_before_training(tmp_path):
    rng = np.random.default_rng(9)
    x, y = _pairs(rng, 16, 16)
    trainer = jt.Trainer(optax.adam(1e-2), epochs=1, batch_size=8)
    key = jr.PRNGKey(0)
    trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x, y), key=key, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different model"):
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1), width=4), (x, y), key=key, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another key"):
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x, y), key=jr.PRNGKey(9), checkpoint_dir=tmp_path, progress=False)
    # A flipped byte in the state file is caught by the checksum.
    meta = json.loads((tmp_path / "latest.json").read_text())
    state = tmp_path / meta["state_file"]
    raw = bytearray(state.read_bytes())
    raw[-1] ^= 0xFF
    state.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x, y), key=key, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x, y), key=key, checkpoint_dir=tmp_path, progress=False)
    # resume=False ignores the directory's checkpoint and starts afresh.
    trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x, y), key=key, checkpoint_dir=tmp_path, resume=False, progress=False)


def test_bad_inputs_are_reported_before_training(tmp_path):
    rng = np.random.default_rng(10)
    x, y = _pairs(rng, 16, 16)
    trainer = jt.Trainer(optax.adam(1e-2), epochs=1, batch_size=8)
    key = jr.PRNGKey(0)
    with pytest.raises(ValueError, match="in_channels"):
        trainer.fit(ConvNet(2, 1, jr.PRNGKey(1)), (x, y), key=key, progress=False)
    with pytest.raises(ValueError, match="out_channels to 1"):
        trainer.fit(ConvNet(1, 3, jr.PRNGKey(1)), (x, y), key=key, progress=False)
    with pytest.raises(ValueError, match="in_channels"):  # 2-D data into a 1-D model
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x[..., None], y[..., None]), key=key, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), (x[:0], y[:0]), key=key, progress=False)
    with pytest.raises(ValueError, match="larger than the training set"):
        jt.Trainer(optax.adam(1e-2), epochs=1, batch_size=64).fit(ConvNet(1, 1, jr.PRNGKey(1)), (x, y), key=key, progress=False)
    with pytest.raises(ValueError, match="different numbers of samples"):
        jt.ArrayDataset(x, y[:3])
    with pytest.raises(ValueError, match="channel axis"):
        jt.ArrayDataset(x[:, 0, 0], y[:, 0, 0])
    with pytest.raises(ValueError, match="use_params"):
        jt.Trainer(optax.adam(1e-2), epochs=1, batch_size=8, use_params=True).fit(Stencil(), (x, y), key=key, progress=False)
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"this is not an hdf5 file" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        trainer.fit(ConvNet(1, 1, jr.PRNGKey(1)), str(bad), key=key, progress=False)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        jt.HDF5Dataset(empty)
    nodata = tmp_path / "nodata.h5"
    with h5py.File(nodata, "w") as f:
        f["inputs"] = x
    with pytest.raises(ValueError, match="outputs"):
        jt.HDF5Dataset(nodata)
    zero = tmp_path / "zero.h5"
    with h5py.File(zero, "w") as f:
        f["inputs"], f["outputs"] = x[:0], y[:0]
    with pytest.raises(ValueError, match="no samples"):
        jt.HDF5Dataset(zero)


def _write_jaxnum_file(path, x, y, scalars, complete=True):
    """A file in the `jaxnum.data` layout (docs/data.md)."""
    with h5py.File(path, "w") as f:
        f["inputs"], f["outputs"], f["scalars"] = x, y, scalars
        f["params/log_a"] = x[:, 0]
        f.attrs["complete"] = complete
        f.attrs["num_samples"] = len(x)
        f.attrs["config"] = "{}"


def test_hdf5_training_equals_in_memory(tmp_path):
    from jaxnum.data import DataLoader

    rng = np.random.default_rng(11)
    x, y = _pairs(rng, 30, 16)
    path = tmp_path / "train.h5"
    _write_jaxnum_file(path, x, y, np.zeros((30, 0)))
    train = np.sort(rng.choice(30, 24, replace=False))
    trainer = jt.Trainer(optax.adam(1e-2), epochs=2, batch_size=8)
    model = ConvNet(1, 1, jr.PRNGKey(8))
    a, ha = trainer.fit(model, (x[train], y[train]), key=jr.PRNGKey(9), eval_data={"all": (x, y)}, progress=False)
    # The same split given as indices, and as a `jaxnum.data.DataLoader`.
    with jt.HDF5Dataset(path, indices=train) as ds:
        assert ds.params is None  # `scalars` is empty: nothing to condition on
        b, hb = trainer.fit(model, ds, key=jr.PRNGKey(9), eval_data={"all": str(path)}, progress=False)
    c, hc = trainer.fit(model, DataLoader(str(path), 8, indices=train), key=jr.PRNGKey(9), progress=False)
    assert _same(a, b) and _same(a, c)
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb] == [h["train_loss"] for h in hc]
    np.testing.assert_allclose(ha[-1]["eval"]["all"]["rel_l2"], hb[-1]["eval"]["all"]["rel_l2"], rtol=1e-13)
    # Scalar parameters are read from `scalars`; an unfinished file is refused.
    _write_jaxnum_file(tmp_path / "p.h5", x, y, rng.standard_normal((30, 2)))
    with jt.HDF5Dataset(tmp_path / "p.h5", indices=[3, 1]) as ds:
        np.testing.assert_array_equal(ds.params[np.array([0, 1])], np.asarray(h5py.File(tmp_path / "p.h5")["scalars"])[[3, 1]])
    _write_jaxnum_file(tmp_path / "part.h5", x, y, np.zeros((30, 0)), complete=False)
    with pytest.raises(ValueError, match="unfinished"):
        jt.HDF5Dataset(tmp_path / "part.h5")


def test_autoregressive_training_with_curriculum_learns_the_heat_step():
    rng = np.random.default_rng(12)
    traj = _heat_trajectories(rng, 8, 16, T=6, nu=0.2)
    test = _heat_trajectories(rng, 4, 32, T=6, nu=0.2)
    dummy_inputs = traj[:, :, 0]
    trainer = jt.Trainer(
        optax.adam(5e-2), loss=jt.MSE(), objective=jt.Autoregressive(curriculum=jt.TanhCurriculum(), initial="outputs"),
        epochs=40, batch_size=4, normalise=False,
    )
    model = Stencil((0.0, 1.0, 0.0))
    trained, history = trainer.fit(
        model, (dummy_inputs, traj), key=jr.PRNGKey(0), eval_data={"n32": (test[:, :, 0], test)},
        eval_every=100, progress=False,
    )
    assert history[0]["teacher_forcing"] == 1.0 and history[-1]["teacher_forcing"] == 0.0
    np.testing.assert_allclose(trained.w, [0.2, 0.6, 0.2], atol=0.02)
    # The recorded rollout nRMSE (at another resolution) equals a hand rollout.
    errs = []
    for u in test:
        pred = np.asarray(jt.rollout(trained, jnp.asarray(u[:, 0]), 5))
        errs.append(np.mean([np.linalg.norm(pred[:, t] - u[:, t + 1]) / np.linalg.norm(u[:, t + 1]) for t in range(5)]))
    np.testing.assert_allclose(history[-1]["eval"]["n32"]["nrmse"], np.mean(errs), rtol=1e-10)
    assert history[-1]["eval"]["n32"]["nrmse"] < 0.1


def test_pushforward_and_parameter_conditioned_model():
    rng = np.random.default_rng(13)
    traj = _heat_trajectories(rng, 8, 16, T=6, nu=0.2)
    params = np.zeros((8, 1))
    trainer = jt.Trainer(
        optax.adam(5e-2), loss=jt.MSE(), objective=jt.Autoregressive(pushforward=2, initial="outputs"),
        epochs=8, batch_size=4, use_params=True,
    )
    trained, history = trainer.fit(Stencil((0.0, 1.0, 0.0)), (traj[:, :, 0], traj, params), key=jr.PRNGKey(1), progress=False)
    assert isinstance(trained, jt.NormalisedModel)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    out = trained(jnp.asarray(traj[0, :, 0]), jnp.zeros(1))
    assert out.shape == (1, 16)
    with pytest.raises(ValueError, match="not both"):
        jt.Autoregressive(curriculum=jt.TanhCurriculum(), pushforward=1)


def test_initial_state_from_inputs_is_the_jaxnum_data_layout():
    # jaxnum.data stores u0 as `inputs` and the states at t_1..t_T as `outputs`.
    traj = _heat_trajectories(np.random.default_rng(15), 8, 16, T=6)
    kw = {"loss": jt.MSE(), "epochs": 3, "batch_size": 4, "normalise": False}
    cur = jt.TanhCurriculum()
    a, ha = jt.Trainer(optax.adam(5e-2), objective=jt.Autoregressive(curriculum=cur), **kw).fit(
        Stencil(), (traj[:, :, 0], traj[:, :, 1:]), key=jr.PRNGKey(3), progress=False)
    b, hb = jt.Trainer(optax.adam(5e-2), objective=jt.Autoregressive(curriculum=cur, initial="outputs"), **kw).fit(
        Stencil(), (traj[:, :, 0], traj), key=jr.PRNGKey(3), progress=False)
    assert _same(a, b) and [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    with pytest.raises(ValueError, match="one state"):
        jt.Trainer(optax.adam(5e-2), objective=jt.Autoregressive(), **kw).fit(
            Stencil(), (np.zeros((8, 2, 16)), traj[:, :, 1:]), key=jr.PRNGKey(3), progress=False)


@pytest.mark.slow
def test_cape_fno_on_generated_burgers_with_curriculum(tmp_path):
    """End to end: `jaxnum.data.generate` (Burgers, viscosity over a decade, a time
    series) -> HDF5 -> CAPE-wrapped FNO trained with the curriculum on the scalars."""
    jnn = pytest.importorskip("jaxnum.nn")
    if not hasattr(jnn, "CAPE"):
        pytest.skip("jaxnum.nn.CAPE not available")
    from jaxnum.data import generate
    from jaxnum.pde._catalogue import problem_from_name

    path = str(tmp_path / "burgers.h5")
    problem = problem_from_name("burgers", resolution=32, viscosity_range=(0.02, 0.2), num_saves=4, t_final=0.4)
    generate(problem, 24, path, seed=0, progress=False)
    with jt.HDF5Dataset(path, indices=np.arange(16)) as train, jt.HDF5Dataset(path, indices=np.arange(16, 24)) as test:
        assert train.params is not None and train.params.shape == (16, 1)
        base = jnn.FNO(1, 1, (8,), 16, 2, key=jr.PRNGKey(0))
        model = jnn.CAPE(base, 1, 1, 1, key=jr.PRNGKey(1), modes=4)
        trainer = jt.Trainer(
            optax.adam(3e-3), objective=jt.Autoregressive(curriculum=jt.TanhCurriculum()),
            epochs=6, batch_size=4, use_params=True,
        )
        untrained = jt.NormalisedModel(model, *trainer.objective.fit_normalisers(train))
        before = trainer.evaluate(untrained, test)["nrmse"]
        _trained, history = trainer.fit(model, train, key=jr.PRNGKey(2), eval_data={"test": test}, eval_every=3, progress=False)
    assert history[0]["teacher_forcing"] == 1.0 and history[-1]["teacher_forcing"] == 0.0
    after = history[-1]["eval"]["test"]["nrmse"]
    assert np.isfinite(after) and after < 0.7 * before


_KILLED = textwrap.dedent(
    """
    import sys, time
    import jax, jax.random as jr, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {root!r})
    import jaxnum.train as jt
    from tests.test_train import ConvNet, _pairs
    x, y = _pairs(np.random.default_rng(16), 32, 16)
    trainer = jt.Trainer(optax.adam(1e-2), epochs=40, batch_size=8)
    trainer.fit(ConvNet(1, 1, jr.PRNGKey(0)), (x, y), key=jr.PRNGKey(1), checkpoint_dir={ckpt!r},
                checkpoint_every_steps=1, progress=False)
    """
)


@pytest.mark.slow
def test_resume_after_a_real_kill(tmp_path):
    """SIGKILL a training process while it writes a checkpoint every step; the
    same call resumes to the parameters of an uninterrupted run."""
    import signal
    import time

    ckpt = tmp_path / "ckpt"
    script = tmp_path / "killed.py"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script.write_text(_KILLED.format(root=root, ckpt=str(ckpt)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            latest = ckpt / "latest.json"
            if latest.exists():
                try:
                    if json.loads(latest.read_text())["step"] >= 30:
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    meta = json.loads((ckpt / "latest.json").read_text())
    assert 30 <= meta["step"] < 160
    x, y = _pairs(np.random.default_rng(16), 32, 16)
    trainer = jt.Trainer(optax.adam(1e-2), epochs=40, batch_size=8)
    model = ConvNet(1, 1, jr.PRNGKey(0))
    resumed, hist = trainer.fit(model, (x, y), key=jr.PRNGKey(1), checkpoint_dir=ckpt, checkpoint_every_steps=1, progress=False)
    ref, ref_hist = trainer.fit(model, (x, y), key=jr.PRNGKey(1), progress=False)
    assert _same(resumed, ref)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]


_SHARDED = textwrap.dedent(
    """
    import sys
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    import jaxnum.train as jt
    sys.path.insert(0, {root!r})
    from tests.test_train import ConvNet, _pairs, _heat_trajectories, Stencil
    assert len(jax.devices()) == 4, jax.devices()
    x, y = _pairs(np.random.default_rng(0), 32, 16)
    model = ConvNet(1, 1, jr.PRNGKey(0))
    outs = []
    for parallel in (None, jt.DataParallel()):
        t = jt.Trainer(optax.adam(1e-2), epochs=2, batch_size=8, parallel=parallel)
        m, h = t.fit(model, (x, y), key=jr.PRNGKey(1), eval_data={{"a": (x[:6], y[:6])}}, progress=False)
        outs.append((m, h))
    (a, ha), (b, hb) = outs
    for la, lb in zip(jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array)), jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))):
        np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose([h["train_loss"] for h in ha], [h["train_loss"] for h in hb], rtol=1e-12)
    np.testing.assert_allclose(ha[-1]["eval"]["a"]["rel_l2"], hb[-1]["eval"]["a"]["rel_l2"], rtol=1e-12)
    traj = _heat_trajectories(np.random.default_rng(1), 8, 16, T=5)
    res = []
    for parallel in (None, jt.DataParallel()):
        t = jt.Trainer(optax.adam(5e-2), objective=jt.Autoregressive(curriculum=jt.TanhCurriculum(), initial="outputs"), epochs=2, batch_size=4, parallel=parallel)
        res.append(t.fit(Stencil(), (traj[:, :, 0], traj), key=jr.PRNGKey(2), progress=False)[0])
    np.testing.assert_allclose(res[0].model.w, res[1].model.w, rtol=1e-11)
    try:
        jt.Trainer(optax.adam(1e-2), batch_size=6, parallel=jt.DataParallel())
    except ValueError as e:
        assert "multiple of 4" in str(e)
    else:
        raise AssertionError("batch size 6 on 4 devices accepted")
    # float32 smoke test: float64 files/arrays, a float32 model, on 4 devices.
    jax.config.update("jax_enable_x64", False)
    m32 = ConvNet(1, 1, jr.PRNGKey(3))
    t = jt.Trainer(optax.adam(1e-2), epochs=3, batch_size=8, parallel=jt.DataParallel())
    out, h = t.fit(m32, (x, y), key=jr.PRNGKey(4), eval_data={{"a": (x[:6], y[:6])}}, progress=False)
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(eqx.filter(out, eqx.is_array)))
    assert np.isfinite(h[-1]["eval"]["a"]["rel_l2"]) and h[-1]["train_loss"] < h[0]["train_loss"]
    print("SHARDED-OK")
    """
)


def test_sharded_training_equals_single_device(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SHARDED-OK" in proc.stdout


@pytest.mark.slow
def test_train_command_writes_a_model_that_loads(tmp_path):
    import argparse

    pytest.importorskip("jaxnum.nn")
    from jaxnum.train._cli import add_train_parser, run_train

    rng = np.random.default_rng(14)
    x, y = _pairs(rng, 40, 32)
    _write_jaxnum_file(tmp_path / "d.h5", x, y, np.zeros((40, 0)))
    _write_jaxnum_file(tmp_path / "d64.h5", np.repeat(x[:8], 2, -1), np.repeat(y[:8], 2, -1), np.zeros((8, 0)))
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args([
        "train", str(tmp_path / "d.h5"), "--out", str(out), "--eval", f"64={tmp_path / 'd64.h5'}",
        "--modes", "4", "--width", "8", "--depth", "2", "--epochs", "2", "--batch-size", "8",
        "--float64", "--no-progress",
    ])
    assert run_train(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert set(history[-1]["eval"]) == {"test", "64"}
    model, spec = jt.load_model(out)
    assert isinstance(model, jt.NormalisedModel) and spec["kwargs"]["modes"] == [4]
    test = jt.HDF5Dataset(tmp_path / "d.h5", indices=np.arange(36, 40))
    got = jt.Trainer(optax.adam(1e-3), batch_size=8).evaluate(model, test)["rel_l2"]
    np.testing.assert_allclose(got, history[-1]["eval"]["test"]["rel_l2"], rtol=1e-10)
    test.close()
    # Bad input: a clear message and exit status 2, nothing trained.
    args = parser.parse_args(["train", str(tmp_path / "missing.h5"), "--out", str(out), "--no-progress", "--float64"])
    assert run_train(args) == 2


# --- exponential moving average of the parameters ----------------------------------


def test_parameter_ema_matches_torch_averaged_model():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from jaxnum.train._ema import ema_parameters, parameter_ema

    rng = np.random.default_rng(11)
    thetas = rng.standard_normal((6, 3, 2))  # the parameters after each step
    decay = 0.8
    # optax.identity: the "gradient" fed in is the update, so params walk through thetas
    opt = parameter_ema(optax.identity(), decay)
    params = {"w": jnp.asarray(thetas[0])}
    state = opt.init(params)
    for k in range(1, len(thetas)):
        upd, state = opt.update({"w": jnp.asarray(thetas[k] - thetas[k - 1])}, state, params)
        params = optax.apply_updates(params, upd)
    np.testing.assert_allclose(params["w"], thetas[-1], rtol=1e-12)

    lin = torch.nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(thetas[0]))
    avg = AveragedModel(lin, multi_avg_fn=get_ema_multi_avg_fn(decay))
    avg.update_parameters(lin)  # copies the initial weights
    for k in range(1, len(thetas)):
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(thetas[k]))
        avg.update_parameters(lin)
    ref = avg.module.weight.detach().numpy()
    # and by hand
    hand = thetas[0]
    for k in range(1, len(thetas)):
        hand = decay * hand + (1 - decay) * thetas[k]
    np.testing.assert_allclose(ref, hand, rtol=1e-12)
    np.testing.assert_allclose(ema_parameters(state)["w"], hand, rtol=1e-12)
    assert ema_parameters(opt.init(params)) is not None
    assert ema_parameters(optax.adam(1e-3).init(params)) is None
    chained = optax.chain(optax.clip(1.0), parameter_ema(optax.sgd(1e-2), 0.5))
    assert ema_parameters(chained.init(params))["w"].shape == (3, 2)


def test_trainer_ema_returns_the_average_and_leaves_training_unchanged():
    rng = np.random.default_rng(12)
    x, y = _pairs(rng)
    model = ConvNet(1, 1, jr.PRNGKey(0))
    opt = optax.adam(1e-2)
    key = jr.PRNGKey(1)
    kw = {"optimiser": opt, "epochs": 3, "batch_size": 8, "key": key, "normalise": False, "progress": False}
    plain, plain_hist = jt.fit(model, (x, y), **kw)
    averaged, hist = jt.fit(model, (x, y), ema=0.7, eval_data={"train": (x, y)}, **kw)
    # training itself is the same; only the returned / evaluated model is the average
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in plain_hist]
    assert not _same(averaged, plain)

    # by hand: the trainer's batches, adam, then the average of the iterates
    data_key, _ = jr.split(key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)
    avg = params

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return jt.RelativeLp()(jax.vmap(eqx.combine(p, static))(xb), yb)

        g = jax.grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state

    for epoch in range(3):
        perm = epoch_permutation(data_key, epoch, len(x))
        for b in range(4):
            idx = np.sort(perm[8 * b : 8 * b + 8])
            params, state = step(params, state, x[idx], y[idx])
            avg = jax.tree_util.tree_map(lambda a, p: 0.7 * a + 0.3 * p, avg, params)
    assert tree_allclose(eqx.filter(plain, eqx.is_array), params, rtol=1e-12, atol=1e-14)
    assert tree_allclose(eqx.filter(averaged, eqx.is_array), avg, rtol=1e-12, atol=1e-14)
    # the evaluation recorded during fit is that of the averaged model
    pred = np.asarray(jax.vmap(averaged)(jnp.asarray(x)))
    ref = np.mean([np.linalg.norm(p - t) / np.linalg.norm(t) for p, t in zip(pred, y)])
    np.testing.assert_allclose(hist[-1]["eval"]["train"]["rel_l2"], ref, rtol=1e-10)


def test_trainer_ema_resumes_to_the_same_average(tmp_path):
    rng = np.random.default_rng(13)
    x, y = _pairs(rng, 24, 16)
    trainer = jt.Trainer(optax.adam(1e-2), epochs=4, batch_size=8, ema=0.9)
    model = ConvNet(1, 1, jr.PRNGKey(4))
    key = jr.PRNGKey(5)
    ref, _ = trainer.fit(model, (x, y), key=key, progress=False)

    def crash(record, model):
        if record["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path, callbacks=[crash], progress=False)
    resumed, _ = trainer.fit(model, (x, y), key=key, checkpoint_dir=tmp_path, progress=False)
    assert _same(resumed, ref)
    # a checkpoint written with the average does not load into a run without one
    with pytest.raises(ValueError, match="different model or optimiser"):
        jt.Trainer(optax.adam(1e-2), epochs=4, batch_size=8).fit(model, (x, y), key=key, checkpoint_dir=tmp_path,
                                                                 progress=False)


@pytest.mark.parametrize("decay", [1.0, -0.1, 2, True, "0.9"])
def test_trainer_ema_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match=r"decay.*\[0, 1\)"):
        jt.Trainer(optax.adam(1e-3), ema=decay)


# --- glibc malloc setting (jaxnum.train.tune_malloc) ---------------------------------------

def _reuse_faults(size=64 << 20):
    """Faults per page of touching a 64 MiB block malloc'ed right after an equal block
    was freed: with freed memory kept in the process the second block reuses touched
    pages; with glibc's defaults it is a fresh mmap, one fault per page. Standalone
    (its source also runs in a subprocess that loads only `_malloc.py`: no jax import)."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    a = libc.malloc(size)
    ctypes.memset(a, 1, size)
    libc.free(a)
    b = libc.malloc(size)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(b, 2, size)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    libc.free(b)
    return (f1 - f0) / (size // 4096)


def _glibc_or_skip():
    from jaxnum.train import _malloc

    if _malloc._glibc() is None:
        pytest.skip("glibc only")
    return _malloc


def test_tune_malloc_keeps_freed_memory_and_opt_out_keeps_glibc_defaults(tmp_path):
    _malloc = _glibc_or_skip()
    record = jt.tune_malloc()
    assert record["applied"] and record["glibc"] and record["settings"] == _malloc.SETTINGS, record
    assert record["late"] == _malloc._jax_started()
    assert _reuse_faults() < 0.05  # pages reused, not mapped afresh
    # a fresh process that opts out at import keeps glibc's defaults (and the
    # measurement above can fail: there nearly every page faults), then opts in
    script = tmp_path / "optout.py"
    script.write_text(inspect.getsource(_reuse_faults) + textwrap.dedent(
        f"""
        import importlib.util, json
        spec = importlib.util.spec_from_file_location("m", {_malloc.__file__!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        before = _reuse_faults()
        rec = m.tune_malloc()
        print(json.dumps([m.AT_IMPORT, before, rec, _reuse_faults()]))
        """
    ))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAXNUM_TUNE_MALLOC"] = "0"
    out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True, env=env)
    at_import, before, rec, after = json.loads(out.stdout)
    assert not at_import["applied"] and "JAXNUM_TUNE_MALLOC=0" in at_import["reason"]
    assert before > 0.9, before
    assert rec["applied"] and not rec["late"] and after < 0.05, (rec, after)


def test_tune_malloc_does_nothing_off_glibc_and_respects_the_environment(monkeypatch):
    from jaxnum.train import _malloc

    monkeypatch.setattr(sys, "platform", "darwin")
    rec = jt.tune_malloc()
    assert rec == {"applied": False, "glibc": None, "settings": {}, "late": rec["late"],
                   "reason": "not glibc: nothing done"}
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("JAXNUM_TUNE_MALLOC", "0")
    assert not _malloc._tune_at_import()["applied"]
    monkeypatch.setenv("JAXNUM_TUNE_MALLOC", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert "left as given" in _malloc._tune_at_import()["reason"]
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert "no CPU backend" in _malloc._tune_at_import()["reason"]
