"""Per-step overhead of `jaxnum.train.Trainer.fit` against a bare jitted optax loop.

Both sides train the same model on the same batches (the trainer's documented seeded
shuffle) with the same optimiser; the bare loop gets its batches pre-sliced in memory
and does nothing but call the jitted step, so the difference is everything the
trainer adds: batch reading and prefetch, per-step keys, progress bar, loss
bookkeeping, history. Compilation is excluded on both sides (the first epoch is a
warm-up). CPU time (`time.process_time`, all threads) with threads pinned by `benchmarks/_pin.py`.

    python benchmarks/train_overhead.py [--json]
"""

import argparse
import json
import sys
import time

import _pin  # noqa: F401  (pins threads and the core before numpy/jax/torch)

# isort: split

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jaxnum.train as jt
from jaxnum.train._data import epoch_permutation


class ConvNet(eqx.Module):
    conv1: eqx.nn.Conv1d
    conv2: eqx.nn.Conv1d

    def __init__(self, key, width=16):
        k1, k2 = jr.split(key)
        self.conv1 = eqx.nn.Conv1d(1, width, 5, padding="SAME", padding_mode="CIRCULAR", key=k1)
        self.conv2 = eqx.nn.Conv1d(width, 1, 5, padding="SAME", padding_mode="CIRCULAR", key=k2)

    def __call__(self, x):
        return self.conv2(jnp.tanh(self.conv1(x)))


def cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 1, 64)).astype(np.float32)
    yield "tiny conv 1D, n=64, batch 32", ConvNet(jr.PRNGKey(0)), x, np.roll(x, 1, -1), 32
    from jaxnum.nn import FNO

    x = rng.standard_normal((256, 1, 32, 32)).astype(np.float32)
    y = np.roll(x, 1, -1) + 0.5 * x
    yield "FNO 2D 32^2, width 32, modes 12, depth 4, batch 16", FNO(1, 1, (12, 12), 32, 4, key=jr.PRNGKey(1)), x, y, 16


def bare(model, x, y, batch_size, epochs, key, opt):
    data_key, _ = jr.split(key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)
    loss_fn = jt.RelativeLp()

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return loss_fn(jax.vmap(eqx.combine(p, static))(xb), yb)

        value, g = jax.value_and_grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, value

    nb = len(x) // batch_size
    batches = []
    for e in range(epochs):
        perm = epoch_permutation(data_key, e, len(x))
        batches.append([np.sort(perm[b * batch_size : (b + 1) * batch_size]) for b in range(nb)])
    batches = [[(x[i], y[i]) for i in ep] for ep in batches]
    marks = []
    for ep in batches:
        for xb, yb in ep:
            params, state, _value = step(params, state, xb, yb)
        jax.block_until_ready(params)
        marks.append((time.process_time(), time.perf_counter()))
    return marks, nb, params


def trainer(model, x, y, batch_size, epochs, key, opt):
    marks = []
    t = jt.Trainer(opt, epochs=epochs, batch_size=batch_size, normalise=False)
    out, _ = t.fit(model, (x, y), key=key, progress=True,
                   callbacks=[lambda rec, m: marks.append((time.process_time(), time.perf_counter()))])
    return marks, len(x) // batch_size, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, model, x, y, bs in cases():
        opt = optax.adam(1e-3)
        key = jr.PRNGKey(2)
        # "bare (again)" is a second bare loop: its difference from the first is the
        # noise floor of this machine.
        sides = (("bare", bare), ("trainer", trainer), ("bare2", bare))
        per = {side: [] for side, _ in sides}
        wall = {side: [] for side, _ in sides}
        results = {}
        for _ in range(args.repeats):
            for side, fn in sides:
                marks, nb, out = fn(model, x, y, bs, args.epochs, key, opt)
                steps = nb * (args.epochs - 1)  # epoch 1 (with compilation) is the warm-up
                per[side].append((marks[-1][0] - marks[0][0]) / steps)
                wall[side].append((marks[-1][1] - marks[0][1]) / steps)
                results[side] = out
        # Same answer before comparing times.
        leaves_a = jax.tree_util.tree_leaves(eqx.filter(results["bare"], eqx.is_array))
        leaves_b = jax.tree_util.tree_leaves(eqx.filter(results["trainer"], eqx.is_array))
        agree = all(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6) for a, b in zip(leaves_a, leaves_b))
        b_cpu, t_cpu, b2_cpu = np.median(per["bare"]), np.median(per["trainer"]), np.median(per["bare2"])
        rows.append({
            "case": name, "steps_timed": steps, "agree": bool(agree),
            "bare_cpu_ms": 1e3 * b_cpu, "trainer_cpu_ms": 1e3 * t_cpu,
            "overhead_cpu_us": 1e6 * (t_cpu - b_cpu), "ratio_cpu": t_cpu / b_cpu,
            "bare_again_cpu_ms": 1e3 * b2_cpu, "noise_cpu_us": 1e6 * (b2_cpu - b_cpu),
            "bare_wall_ms": 1e3 * np.median(wall["bare"]), "trainer_wall_ms": 1e3 * np.median(wall["trainer"]),
        })
    if args.json:
        print(json.dumps(rows))
    else:
        print("| case | steps timed | bare CPU ms/step | trainer CPU ms/step | overhead CPU us/step | ratio | "
              "bare again CPU ms/step (noise us) | bare wall ms | trainer wall ms | same params |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['steps_timed']} | {r['bare_cpu_ms']:.3f} | {r['trainer_cpu_ms']:.3f} | "
                  f"{r['overhead_cpu_us']:.0f} | {r['ratio_cpu']:.3f} | {r['bare_again_cpu_ms']:.3f} ({r['noise_cpu_us']:+.0f}) | "
                  f"{r['bare_wall_ms']:.3f} | {r['trainer_wall_ms']:.3f} | {r['agree']} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
