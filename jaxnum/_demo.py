"""`jaxnum demo`: the main job end to end, on its embedded defaults.

1. `pde` + `data`: a Darcy-flow family (FNO set-up: thresholded Gaussian-random-field
   coefficients 12/3, `f = 1`, zero Dirichlet) is sampled and solved as one
   similarity-ordered sequence with a recycled deflated CG, into HDF5 files: a
   training/test set at the training resolution and a test set at twice it.
2. `train`: an FNO learns coefficient -> pressure (relative L2 loss, AdamW with a
   cosine schedule), checkpointed every epoch so an interrupted demo resumes.
3. Evaluation at both resolutions (zero-shot at the finer one).
4. `inverse`: from noisy pressure values at a lattice of sensors, the coefficient of
   one test sample is recovered by L-BFGS, once through the differentiable solver
   (explicit adjoint, deflation space recycled across iterations) and once through
   the trained FNO, for comparison.
5. A short report and PNG figures in the output folder.
"""

import json
import os
import pathlib
import sys
import time

import numpy as np


def add_demo_parser(sub):
    demo = sub.add_parser(
        "demo",
        help="generate Darcy data with recycled solves, train an FNO, evaluate, report",
        description=(
            "The main job on a laptop CPU in a few minutes: generates a Darcy-flow "
            "dataset (thresholded random coefficients, FNO set-up) by solving the "
            "family as one similarity-ordered sequence with a recycled deflated CG, "
            "trains an FNO on it, evaluates it at the training resolution and zero-shot "
            "at twice that resolution, and writes a report (report.md) and PNG figures "
            "into the output folder. Re-running the same command reuses the finished "
            "datasets and resumes training from the last checkpoint."
        ),
    )
    from .cli import _positive_int

    demo.add_argument("--out", default="jaxnum-demo", help="output folder (default ./jaxnum-demo)")
    demo.add_argument("--resolution", type=_positive_int, default=32,
                      help="training grid points per axis (default 32); tests also at 2x")
    demo.add_argument("--train-samples", type=_positive_int, default=500, help="training samples (default 500)")
    demo.add_argument("--test-samples", type=_positive_int, default=100,
                      help="test samples per resolution (default 100)")
    demo.add_argument("--epochs", type=_positive_int, default=30, help="training epochs (default 30)")
    demo.add_argument("--batch-size", type=_positive_int, default=20, help="samples per step (default 20)")
    demo.add_argument("--modes", type=_positive_int, default=12, help="Fourier modes per axis (default 12)")
    demo.add_argument("--width", type=_positive_int, default=32, help="FNO channels (default 32)")
    demo.add_argument("--depth", type=_positive_int, default=4, help="Fourier layers (default 4)")
    demo.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return demo


def _check(args):
    if 2 * args.modes > args.resolution:
        return (f"--modes ({args.modes}) needs --resolution >= {2 * args.modes} "
                "(each axis keeps modes positive and negative frequencies)")
    if args.batch_size > args.train_samples:
        return f"--batch-size ({args.batch_size}) must not exceed --train-samples ({args.train_samples})"
    if not args.lr > 0:
        return f"--lr must be positive, got {args.lr}"
    return None


def run_demo(args) -> int:
    problem = _check(args)
    if problem is not None:
        print(f"jaxnum demo: {problem}.", file=sys.stderr)
        return 2
    import jax

    jax.config.update("jax_enable_x64", True)  # the solves run in float64
    import jax.random as jr
    import optax

    from . import data as jdata
    from . import nn as jnn
    from . import train as jtrain
    from .pde import Darcy

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, n2 = args.resolution, 2 * args.resolution
    n_train, n_test = args.train_samples, args.test_samples
    progress = not args.no_progress
    print(f"jaxnum demo: Darcy flow, train at {n}x{n}, test at {n}x{n} and {n2}x{n2}; "
          f"output in {out.resolve()}", flush=True)

    # 1. Data: one recycled, similarity-ordered sequence per file.
    t0 = time.perf_counter()
    coarse = out / f"darcy_{n}.h5"
    fine = out / f"darcy_{n2}.h5"
    # The recycled deflated CG is passed explicitly: `generate`'s own default for Darcy is
    # the faster CG + multigrid (no recycling), and the demo shows recycling at work.
    for res, count, path, seed in ((n, n_train + n_test, coarse, args.seed), (n2, n_test, fine, args.seed + 1)):
        problem = Darcy(resolution=res)
        jdata.generate(problem, count, os.fspath(path), seed=seed, solver=problem.default_solver(),
                       preconditioner=None, progress=progress)
    t_data = time.perf_counter() - t0
    stats = _solver_stats(coarse)
    baseline = _independent_matvecs(Darcy(resolution=n), coarse, count=8)
    print(f"  data: {n_train + n_test} + {n_test} samples in {t_data:.1f} s; recycled deflated CG "
          f"{stats['mean_matvecs']:.0f} matvecs/sample vs {baseline:.0f} for independent CG "
          f"(first 8 samples)", flush=True)

    # 2. Training.
    # float32 training (data are stored in float64; the trainer casts batches).
    jax.config.update("jax_enable_x64", False)
    key_model, key_train = jr.split(jr.PRNGKey(args.seed))
    model = jnn.FNO(1, 1, args.modes, args.width, args.depth, key=key_model, num_spatial_dims=2)
    train = jtrain.HDF5Dataset(coarse, indices=np.arange(n_train))
    test = jtrain.HDF5Dataset(coarse, indices=np.arange(n_train, n_train + n_test))
    test_fine = jtrain.HDF5Dataset(fine)
    steps = args.epochs * (n_train // args.batch_size)
    schedule = optax.cosine_decay_schedule(args.lr, steps, alpha=1e-2)
    optimiser = optax.adamw(schedule, weight_decay=1e-4)
    t0 = time.perf_counter()
    model, history = jtrain.fit(
        model, train, optimiser=optimiser, epochs=args.epochs, batch_size=args.batch_size,
        key=key_train, eval_data={n: test, n2: test_fine}, eval_every=max(1, args.epochs // 10),
        checkpoint_dir=os.fspath(out / "checkpoints"), progress=progress,
        metrics_path=os.fspath(out / "history.json"),
    )
    t_train = time.perf_counter() - t0

    # 3. Evaluation, figures, report.
    trainer = jtrain.Trainer(optimiser, batch_size=args.batch_size)
    errors = {res: trainer.evaluate(model, ds)["rel_l2"] for res, ds in ((n, test), (n2, test_fine))}
    for res, err in errors.items():
        print(f"  FNO relative L2 error at {res}x{res}: {err:.4f}", flush=True)
    figures = _figures(out, model, (n, test), (n2, test_fine), history, stats)

    # 4. Inversion of one test sample, through the solver and through the FNO.
    inversion = _inversion(out, model, test, n, args.seed)
    jax.config.update("jax_enable_x64", False)
    for name, row in inversion["rows"].items():
        print(f"  inversion through the {name}: relative error of log a {row['error']:.3f}, "
              f"{row['steps']} L-BFGS steps, {row['seconds']:.1f} s", flush=True)
    figures.append(inversion["figure"])
    report = out / "report.md"
    _write_report(report, args, stats, baseline, t_data, t_train, history, errors, figures, inversion)
    for ds in (train, test, test_fine):
        ds.close()
    print(f"  report: {report.resolve()}")
    for f in figures:
        print(f"  figure: {(out / f).resolve()}")
    finite = all(np.isfinite(e) for e in errors.values())
    return 0 if finite else 1


def _solver_stats(path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        stats = f["stats"]
        mv = np.asarray(stats["num_matvecs"]) if "num_matvecs" in stats else np.zeros(0)
        res = np.asarray(stats["residual"]) if "residual" in stats else np.zeros(0)
        pos = np.asarray(stats["solve_position"]) if "solve_position" in stats else np.arange(len(mv))
    order = np.argsort(pos)
    return {
        "mean_matvecs": float(mv.mean()) if mv.size else float("nan"),
        "max_residual": float(res.max()) if res.size else float("nan"),
        "matvecs_in_order": mv[order],
    }


def _independent_matvecs(problem, path, count: int) -> float:
    """Mean matvecs of plain (unrecycled) CG on the first `count` samples."""
    import h5py
    import jax
    import jax.numpy as jnp
    import lineax as lx

    from .linalg import CG

    with h5py.File(path, "r") as f:
        coeffs = np.asarray(f["inputs"][:count, 0])
    solver = CG(rtol=problem.rtol, atol=0.0)

    @jax.jit
    def solve(a):
        return lx.linear_solve(problem.operator({"coefficient": a}), problem.rhs({"coefficient": a}),
                               solver, throw=False).stats["num_matvecs"]

    return float(np.mean([int(solve(jnp.asarray(a))) for a in coeffs]))


def _predict(model, ds, count):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.asarray(ds.inputs[np.arange(count)]), jnp.float32)
    y = np.asarray(ds.outputs[np.arange(count)])
    return np.asarray(x), y, np.asarray(jax.vmap(model)(x))


def _figures(out, model, coarse, fine, history, stats) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    n, test = coarse
    x, y, _ = _predict(model, test, 3)
    fig, axes = plt.subplots(2, 3, figsize=(9, 5.5))
    for j in range(3):
        im = axes[0, j].imshow(x[j, 0].T, origin="lower", cmap="viridis")
        fig.colorbar(im, ax=axes[0, j], shrink=0.8)
        axes[0, j].set_title(f"coefficient a, sample {j}")
        im = axes[1, j].imshow(y[j, 0].T, origin="lower", cmap="magma")
        fig.colorbar(im, ax=axes[1, j], shrink=0.8)
        axes[1, j].set_title("pressure u")
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"Darcy samples ({n}x{n}): -div(a grad u) = 1, u = 0 on the boundary")
    fig.tight_layout()
    names.append("samples.png")
    fig.savefig(out / names[-1], dpi=110)
    plt.close(fig)

    for tag, (res, ds) in (("prediction", coarse), ("prediction_zero_shot", fine)):
        x, y, p = _predict(model, ds, 2)
        fig, axes = plt.subplots(2, 3, figsize=(9, 5.5))
        for j in range(2):
            for c, (img, title, cmap) in enumerate(
                ((y[j, 0], "solver", "magma"), (p[j, 0], "FNO", "magma"), (p[j, 0] - y[j, 0], "FNO - solver", "RdBu_r"))
            ):
                im = axes[j, c].imshow(img.T, origin="lower", cmap=cmap)
                fig.colorbar(im, ax=axes[j, c], shrink=0.8)
                axes[j, c].set_title(f"{title}, sample {j}")
                axes[j, c].set_xticks([]), axes[j, c].set_yticks([])
        fig.suptitle(f"FNO prediction at {res}x{res}" + (" (zero-shot)" if tag.endswith("shot") else ""))
        fig.tight_layout()
        names.append(f"{tag}.png")
        fig.savefig(out / names[-1], dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    axes[0].semilogy(epochs, [h["train_loss"] for h in history], label="train (rel. L2)")
    for name in history[-1].get("eval", {}):
        pts = [(h["epoch"], h["eval"][name]["rel_l2"]) for h in history if name in h.get("eval", {})]
        axes[0].semilogy(*zip(*pts), "o-", label=f"test {name}x{name}")
    axes[0].set_xlabel("epoch"), axes[0].set_ylabel("relative L2 error"), axes[0].legend()
    axes[0].set_title("training curve")
    mv = stats["matvecs_in_order"]
    axes[1].plot(np.arange(len(mv)), mv, ".", ms=3)
    axes[1].set_xlabel("position in the similarity-ordered sequence")
    axes[1].set_ylabel("matvecs (incl. recycle projection)")
    axes[1].set_title("data generation: recycled deflated CG")
    fig.tight_layout()
    names.append("training_curve.png")
    fig.savefig(out / names[-1], dpi=110)
    plt.close(fig)
    return names


def _inversion(out, model, test, n, seed) -> dict:
    """Recovers `log a` of test sample 0 from 1%-noise pressure data at 10x10 sensors."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .implicit import LBFGS
    from .inverse import (
        DarcyInversion,
        SmoothnessPrior,
        SurrogateInversion,
        invert,
        observe,
        sensor_lattice,
    )
    from .pde import Darcy

    problem = Darcy(resolution=n)
    a_true = jnp.asarray(np.asarray(test.inputs[np.arange(1)])[0, 0], jnp.float64)
    u_true = jnp.asarray(np.asarray(test.outputs[np.arange(1)])[0, 0], jnp.float64)
    m_true = jnp.log(a_true)
    sensors = sensor_lattice(problem.grid.shape, min(10, n))
    sigma = 0.01 * float(jnp.max(jnp.abs(u_true)))
    obs = observe(u_true, sensors) + sigma * jr.normal(jr.PRNGKey(seed + 2), (sensors.shape[0],))
    # Smoothness prior centred on the geometric mean of the two coefficient values.
    prior = SmoothnessPrior(1.0, 1e-2, float(np.log(np.sqrt(problem.high * problem.low))), problem.grid.spacing)
    solver = LBFGS(rtol=1e-6, atol=0.0, max_steps=150)

    def surrogate(a):
        return model(a[None])[0]

    inversions = {
        "solver (adjoint, recycled)": DarcyInversion(problem, sensors, noise_std=sigma, prior=prior),
        "FNO surrogate": SurrogateInversion(surrogate, problem.grid.shape, sensors, noise_std=sigma, prior=prior),
    }
    rows, fields = {}, {}
    for name, inv in inversions.items():
        run = jax.jit(lambda o, inv=inv: invert(inv, o, solver=solver))
        jax.block_until_ready(run(obs))  # compile
        t0 = time.perf_counter()
        res = jax.block_until_ready(run(obs))
        seconds = time.perf_counter() - t0
        m = res.value
        fields[name] = np.asarray(m)
        rows[name] = {
            "error": float(jnp.linalg.norm(m - m_true) / jnp.linalg.norm(m_true)),
            "steps": int(res.num_steps),
            "seconds": seconds,
            "converged": bool(res.converged),
            "matvecs": int(res.stats["forward_matvecs"] + res.stats["adjoint_matvecs"])
            if "forward_matvecs" in res.stats else None,
        }
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    vmin, vmax = float(m_true.min()), float(m_true.max())
    panels = [("true log a (sensors: dots)", np.asarray(m_true))] + [(f"recovered: {k}", v) for k, v in fields.items()]
    for ax, (title, img) in zip(axes, panels):
        im = ax.imshow(img.T, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    s_np = np.asarray(sensors)
    axes[0].plot(s_np[:, 0], s_np[:, 1], "w.", ms=3)
    fig.tight_layout()
    fig.savefig(out / "inversion.png", dpi=110)
    plt.close(fig)
    return {"rows": rows, "figure": "inversion.png", "sensors": int(sensors.shape[0])}


def _write_report(path, args, stats, baseline, t_data, t_train, history, errors, figures, inversion):
    import jax

    n = args.resolution
    lines = [
        "# jaxnum demo report",
        "",
        f"Backend: {jax.default_backend()}, devices: {jax.device_count()}. Seed {args.seed}.",
        "",
        "## Data (jaxnum.pde + jaxnum.data)",
        "",
        (
            f"Darcy flow, thresholded GRF coefficients (12/3), f = 1, zero Dirichlet; "
            f"{args.train_samples} training + {args.test_samples} test samples at {n}x{n}, "
            f"{args.test_samples} test samples at {2 * n}x{2 * n}. Generated in {t_data:.1f} s "
            "(compilation included) as one similarity-ordered sequence with a recycled deflated CG."
        ),
        "",
        "| solver | matvecs per sample (mean) |",
        "|---|---:|",
        f"| recycled DeflatedCG (whole training file) | {stats['mean_matvecs']:.0f} |",
        f"| independent CG (first 8 samples) | {baseline:.0f} |",
        "",
        f"Largest true relative residual: {stats['max_residual']:.1e}.",
        "",
        "## Training (jaxnum.nn + jaxnum.train)",
        "",
        (
            f"FNO(modes={args.modes}, width={args.width}, depth={args.depth}), relative L2 loss, "
            f"AdamW (peak lr {args.lr:g}, cosine decay), batch {args.batch_size}, {args.epochs} epochs, "
            f"{t_train:.1f} s (compilation included); final training loss {history[-1]['train_loss']:.4f}."
        ),
        "",
        "| test resolution | relative L2 error |",
        "|---|---:|",
        *[f"| {res}x{res}{' (zero-shot)' if res != n else ''} | {err:.4f} |" for res, err in errors.items()],
        "",
        "## Inversion (jaxnum.inverse)",
        "",
        (
            f"Test sample 0: log a recovered from pressure at {inversion['sensors']} sensors with 1% noise, "
            "smoothness prior, L-BFGS (at most 150 steps). Time excludes compilation."
        ),
        "",
        "| forward map | relative error of log a | L-BFGS steps | converged | matvecs | time [s] |",
        "|---|---:|---:|---|---:|---:|",
        *[
            f"| {name} | {r['error']:.3f} | {r['steps']} | {r['converged']} | "
            f"{'-' if r['matvecs'] is None else r['matvecs']} | {r['seconds']:.2f} |"
            for name, r in inversion["rows"].items()
        ],
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figures],
        "",
    ]
    tmp = pathlib.Path(str(path) + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    summary = {"errors": {str(k): v for k, v in errors.items()}, "mean_matvecs": stats["mean_matvecs"],
               "inversion": inversion["rows"],
               "independent_cg_matvecs": baseline, "data_seconds": t_data, "train_seconds": t_train}
    tmp = pathlib.Path(path).with_name("summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, pathlib.Path(path).with_name("summary.json"))
